/* Compiles kvrt.h as strict C11 with every warning an error, takes the
 * address of every public function (so the link fails if one is missing),
 * and pins the layout of the parameter structs, which is ABI. */
#include "kvrt/kvrt.h"

#include <stddef.h>
#include <stdio.h>

typedef void (*any_fn)(void);

#define KVRT_ABI_FN(name) (any_fn)name,
static any_fn const k_functions[] = {
#include "kvrt-functions.inc"
};
#undef KVRT_ABI_FN

/* struct_size comes first in every struct, and fields are only appended:
 * these sizes and offsets may grow in a later version, never change. */
_Static_assert(offsetof(kvrt_runtime_params, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(kvrt_model_params, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(kvrt_session_params, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(kvrt_sampler_params, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(kvrt_model_info, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(kvrt_session_stats, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(kvrt_runtime_stats, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(kvrt_snapshot_params, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(kvrt_snapshot_info, struct_size) == 0, "struct_size first");

_Static_assert(sizeof(kvrt_runtime_params) == 24, "kvrt_runtime_params layout");
_Static_assert(offsetof(kvrt_runtime_params, kv_budget_bytes) == 8, "kvrt_runtime_params layout");
_Static_assert(offsetof(kvrt_runtime_params, reserved0) == 20, "kvrt_runtime_params layout");
_Static_assert(sizeof(kvrt_model_params) == 8, "kvrt_model_params layout");
_Static_assert(sizeof(kvrt_session_params) == 20, "kvrt_session_params layout");
_Static_assert(offsetof(kvrt_session_params, max_batch) == 16, "kvrt_session_params layout");
_Static_assert(sizeof(kvrt_sampler_params) == 24, "kvrt_sampler_params layout");
_Static_assert(offsetof(kvrt_sampler_params, top_p) == 12, "kvrt_sampler_params layout");
_Static_assert(offsetof(kvrt_sampler_params, seed) == 16, "kvrt_sampler_params layout");
_Static_assert(sizeof(kvrt_model_info) == 208, "kvrt_model_info layout");
_Static_assert(offsetof(kvrt_model_info, decode_weight_bytes) == 200, "kvrt_model_info layout");
_Static_assert(offsetof(kvrt_model_info, n_params) == 48, "kvrt_model_info layout");
_Static_assert(offsetof(kvrt_model_info, kv_bytes_per_token) == 64, "kvrt_model_info layout");
_Static_assert(offsetof(kvrt_model_info, architecture) == 104, "kvrt_model_info layout");
_Static_assert(offsetof(kvrt_model_info, name) == 136, "kvrt_model_info layout");
_Static_assert(sizeof(kvrt_session_stats) == 80, "kvrt_session_stats layout");
_Static_assert(offsetof(kvrt_session_stats, kv_bytes) == 32, "kvrt_session_stats layout");
_Static_assert(offsetof(kvrt_session_stats, suspended) == 48, "kvrt_session_stats layout");
_Static_assert(offsetof(kvrt_session_stats, spilled) == 52, "kvrt_session_stats layout");
_Static_assert(offsetof(kvrt_session_stats, suspended_bytes) == 56, "kvrt_session_stats layout");
_Static_assert(offsetof(kvrt_session_stats, compute_ns) == 64, "kvrt_session_stats layout");
_Static_assert(offsetof(kvrt_session_stats, attention_ns) == 72, "kvrt_session_stats layout");
_Static_assert(sizeof(kvrt_runtime_stats) == 40, "kvrt_runtime_stats layout");
_Static_assert(offsetof(kvrt_runtime_stats, n_blocks_used) == 32, "kvrt_runtime_stats layout");
_Static_assert(sizeof(kvrt_snapshot_params) == 16, "kvrt_snapshot_params layout");
_Static_assert(offsetof(kvrt_snapshot_params, compression_level) == 4, "kvrt_snapshot_params layout");
_Static_assert(offsetof(kvrt_store_params, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(kvrt_store_save_stats, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(kvrt_store_entry_info, struct_size) == 0, "struct_size first");
_Static_assert(sizeof(kvrt_store_params) == 16, "kvrt_store_params layout");
_Static_assert(offsetof(kvrt_store_params, reserved1) == 8, "kvrt_store_params layout");
_Static_assert(sizeof(kvrt_store_save_stats) == 32, "kvrt_store_save_stats layout");
_Static_assert(offsetof(kvrt_store_save_stats, pack_bytes_written) == 16, "kvrt_store_save_stats layout");
_Static_assert(offsetof(kvrt_store_save_stats, manifest_bytes) == 24, "kvrt_store_save_stats layout");
_Static_assert(sizeof(kvrt_store_entry_info) == 72, "kvrt_store_entry_info layout");
_Static_assert(offsetof(kvrt_store_entry_info, temperature) == 48, "kvrt_store_entry_info layout");
_Static_assert(offsetof(kvrt_store_entry_info, seed) == 64, "kvrt_store_entry_info layout");
_Static_assert(offsetof(kvrt_store_entry_info, manifest_bytes) == 24, "kvrt_store_entry_info layout");
_Static_assert(offsetof(kvrt_store_entry_info, block_raw_bytes) == 40, "kvrt_store_entry_info layout");
_Static_assert(offsetof(kvrt_suspend_params, struct_size) == 0, "struct_size first");
_Static_assert(offsetof(kvrt_suspend_params, compression_level) == 4, "kvrt_suspend_params layout");
_Static_assert(offsetof(kvrt_suspend_params, reserved1) == 12, "kvrt_suspend_params layout");
_Static_assert(offsetof(kvrt_suspend_params, spill_dir) == 16, "kvrt_suspend_params layout");
_Static_assert(sizeof(kvrt_suspend_params) == 16 + sizeof(void*), "kvrt_suspend_params layout");
_Static_assert(KVRT_TOKENIZE_ADD_BOS == 1u, "flag value");

int main(void) {
  size_t i;
  for (i = 0; i < sizeof k_functions / sizeof k_functions[0]; ++i) {
    if (k_functions[i] == NULL) {
      fprintf(stderr, "function %u has no address\n", (unsigned)i);
      return 1;
    }
  }
  if (kvrt_version_number() != KVRT_VERSION_NUMBER) {
    fprintf(stderr, "header %d, library %u\n", KVRT_VERSION_NUMBER,
            (unsigned)kvrt_version_number());
    return 1;
  }
  printf("%u functions of kvrt.h linked from C11; library %s\n",
         (unsigned)(sizeof k_functions / sizeof k_functions[0]), kvrt_version());
  return 0;
}
