// Compiles kvrt.h as strict C++20 with every warning an error and takes the
// address of every public function with its exact type.
#include "kvrt/kvrt.h"

#include <cstdio>
#include <type_traits>

namespace {

#define KVRT_ABI_FN(name) reinterpret_cast<void (*)()>(&name),
void (*const k_functions[])() = {
#include "kvrt-functions.inc"
};
#undef KVRT_ABI_FN

// C linkage and plain C types: a C++ caller sees the same signatures.
static_assert(std::is_same_v<decltype(&kvrt_decode_step),
                             kvrt_status (*)(kvrt_session*, const int32_t*, size_t, float*,
                                             size_t)>);
static_assert(std::is_same_v<decltype(&kvrt_runtime_destroy), void (*)(kvrt_runtime*)>);
static_assert(std::is_standard_layout_v<kvrt_model_info>);
static_assert(std::is_trivially_copyable_v<kvrt_session_params>);
static_assert(sizeof(kvrt_status) == sizeof(int));

}  // namespace

int main() {
  for (auto* f : k_functions) {
    if (f == nullptr) return 1;
  }
  if (kvrt_version_number() != KVRT_VERSION_NUMBER) return 1;
  std::printf("%zu functions of kvrt.h linked from C++20\n",
              sizeof k_functions / sizeof k_functions[0]);
  return 0;
}
