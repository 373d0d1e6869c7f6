// Small models written with `kvrt synth`'s code (random weights, real
// shapes) for the integration tests that need head sizes and head counts
// the test model lacks. A test including this links tools/cmd-synth.cpp
// and its helpers (CMakeLists.txt).
#pragma once

#include <string>
#include <vector>

#include "cli-common.hpp"

namespace kvrt_test {

// A llama model of 2 layers, ff 256, vocab 512, context 512: dim / heads is
// its head_dim. Fields are `kvrt synth` arguments.
struct SynthShape {
  const char* name;
  const char* heads;
  const char* kv_heads;
  const char* dim;
};

// Writes the model to path with weights of `type` (f32, f16, ...); returns
// `kvrt synth`'s exit status (0 on success).
inline int write_synth_model(const SynthShape& s, const std::string& path, const char* type,
                             const char* seed) {
  std::vector<std::string> args = {"kvrt",   "synth",   "-o",     path,   "--dim", s.dim,
                                   "--layers", "2",     "--heads", s.heads, "--kv-heads",
                                   s.kv_heads, "--ff",  "256",    "--vocab", "512",
                                   "--ctx",  "512",     "--type", type,   "--seed", seed};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return kvrt_tools::cmd_synth((int)argv.size(), argv.data());
}

}  // namespace kvrt_test
