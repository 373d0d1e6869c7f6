// What the integration tests know about the test model from outside the
// code under test, and where they find it.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>

namespace kvrt_test {

// "Once upon a time" with BOS, tokenized for stories260K.
inline constexpr int32_t kPrompt[] = {1, 403, 407, 261, 378};
// Greedy continuation of kPrompt on stories260K, from an independent
// implementation.
inline constexpr int32_t kGreedy[64] = {
    432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
    410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394,
    261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267, 337, 335, 312, 432,
    398, 312, 286, 267, 414, 270, 333, 415, 426, 13,  438, 310, 439, 419, 357, 336};

// KVRT_MODEL if set, else KVRT_MODEL_DEFAULT (set by CTest), else "".
inline std::string model_path() {
  const char* p = std::getenv("KVRT_MODEL");
  if (!p || !*p) p = std::getenv("KVRT_MODEL_DEFAULT");
  return p ? p : "";
}

}  // namespace kvrt_test
