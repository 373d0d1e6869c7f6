// Entry point of the kvrt command-line tool: dispatches to the subcommands
// and turns their errors into messages and exit codes.
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>

#include "cli-common.hpp"

namespace kvrt_tools {
int cmd_eval_kv(int argc, char** argv);  // cmd-eval-kv.cpp
int cmd_inspect(int argc, char** argv);  // cmd-inspect.cpp
}  // namespace kvrt_tools

namespace {

struct Command {
  const char* name;
  int (*fn)(int, char**);
  const char* summary;
};

const Command kCommands[] = {
    {"run", kvrt_tools::cmd_run, "generate text from a prompt"},
    {"mem", kvrt_tools::cmd_mem, "KV cache memory per storage format and what a budget holds"},
    {"synth", kvrt_tools::cmd_synth, "write a llama-architecture GGUF model with random weights"},
    {"bench", kvrt_tools::cmd_bench, "measure prefill and decode speed (and the memory roofline)"},
    {"eval-kv", kvrt_tools::cmd_eval_kv, "KL divergence and top-1 agreement of a KV format vs f32"},
    {"inspect", kvrt_tools::cmd_inspect, "print a session snapshot's header and sizes; verify its checksums"},
};

void print_usage(FILE* out) {
  std::fprintf(out,
               "usage: kvrt <command> [options]\n"
               "\n"
               "commands:\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-7s %s\n", c.name, c.summary);
  std::fprintf(out,
               "\n"
               "  kvrt <command> --help   options of one command\n"
               "  kvrt --version          library version and build\n"
               "\n"
               "exit status: 0 success, 1 a library error or a missing file, 2 a bad command line\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    print_usage(stderr);
    return kvrt_tools::kExitUsage;
  }
  const char* cmd = argv[1];
  if (std::strcmp(cmd, "--help") == 0 || std::strcmp(cmd, "-h") == 0 ||
      std::strcmp(cmd, "help") == 0) {
    print_usage(stdout);
    return kvrt_tools::kExitOk;
  }
  if (std::strcmp(cmd, "--version") == 0) {
    std::printf("kvrt %s (%s)\n", kvrt_version(), kvrt_build_info());
    return kvrt_tools::kExitOk;
  }
  for (const Command& c : kCommands) {
    if (std::strcmp(cmd, c.name) != 0) continue;
    try {
      return c.fn(argc, argv);
    } catch (const kvrt_tools::CliError& e) {
      std::fflush(stdout);
      if (e.exit_code == kvrt_tools::kExitUsage)
        std::fprintf(stderr, "kvrt %s: %s\n(see kvrt %s --help)\n", c.name, e.what(), c.name);
      else
        std::fprintf(stderr, "kvrt: %s\n", e.what());
      return e.exit_code;
    } catch (const std::bad_alloc&) {
      std::fflush(stdout);
      std::fprintf(stderr, "kvrt: out of memory\n");
      return kvrt_tools::kExitFailure;
    } catch (const std::exception& e) {
      std::fflush(stdout);
      std::fprintf(stderr, "kvrt: %s\n", e.what());
      return kvrt_tools::kExitFailure;
    }
  }
  std::fprintf(stderr, "kvrt: unknown command '%s'\n\n", cmd);
  print_usage(stderr);
  return kvrt_tools::kExitUsage;
}
