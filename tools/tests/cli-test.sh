#!/usr/bin/env bash
# Integration checks of the kvrt command-line tool, one case per CTest test.
# usage: cli-test.sh CASE KVRT_BINARY MODEL WORK_DIR
# MODEL is the stories260K test model (KVRT_MODEL in the environment wins).
set -u

case_name=$1
kvrt=$2
model=${KVRT_MODEL:-$3}
work=$4
here=$(cd "$(dirname "$0")" && pwd)

rm -rf "$work"
mkdir -p "$work"
out=$work/stdout
err=$work/stderr

fail() {
  echo "FAIL ($case_name): $*" >&2
  echo "--- stdout:" >&2; cat "$out" >&2 2>/dev/null
  echo "--- stderr:" >&2; cat "$err" >&2 2>/dev/null
  exit 1
}

# Runs kvrt with the given arguments; sets rc.
run() {
  "$kvrt" "$@" >"$out" 2>"$err"
  rc=$?
}

expect_rc() {
  [ "$rc" -eq "$1" ] || fail "expected exit status $1, got $rc (kvrt $2)"
}

if [ "$case_name" != missing-model ] && [ "$case_name" != usage ] && [ ! -f "$model" ]; then
  echo "FAIL ($case_name): test model '$model' not found; set KVRT_MODEL or KVRT_TEST_MODEL" >&2
  exit 1
fi

case "$case_name" in
  greedy)
    # The known greedy continuation of the stories260K model.
    run run -m "$model" -p "Once upon a time" -n 64 --temp 0
    expect_rc 0 run
    cmp -s "$out" "$here/greedy-stories260K.txt" || fail "greedy text differs from the expected continuation"
    grep -q "prompt 5 tokens" "$err" || fail "stderr does not report the 5 prompt tokens (BOS + 4)"
    grep -q "generated 64 tokens" "$err" || fail "stderr does not report 64 generated tokens"
    # The same continuation from every SIMD level this CPU has, capped with
    # KVRT_MAX_ISA (scalar code, AVX2, AVX-512 kernels), and the cap shows in
    # the build information.
    run --version
    best=$(sed -n 's/.*cpu: \([a-z0-9]*\).*/\1/p' "$out")
    case "$best" in
      avx512) levels="scalar avx2 avx512" ;;
      avx2) levels="scalar avx2" ;;
      scalar) levels="scalar" ;;
      *) fail "kvrt --version names no SIMD level" ;;
    esac
    for level in $levels; do
      KVRT_MAX_ISA=$level "$kvrt" --version >"$out" 2>"$err"
      grep -q "cpu: $level[ ;]" "$out" || fail "KVRT_MAX_ISA=$level: --version does not report cpu: $level"
      KVRT_MAX_ISA=$level "$kvrt" run -m "$model" -p "Once upon a time" -n 64 --temp 0 >"$out" 2>"$err"
      rc=$?
      expect_rc 0 "run with KVRT_MAX_ISA=$level"
      cmp -s "$out" "$here/greedy-stories260K.txt" || fail "KVRT_MAX_ISA=$level: greedy text differs"
    done
    # A value not understood stops the runtime, naming the variable.
    KVRT_MAX_ISA=avx3 "$kvrt" run -m "$model" -p "Once upon a time" -n 4 >"$out" 2>"$err"
    rc=$?
    expect_rc 1 "run with KVRT_MAX_ISA=avx3"
    grep -q 'KVRT_MAX_ISA is "avx3"' "$err" || fail "the error does not name KVRT_MAX_ISA and its value"
    [ ! -s "$out" ] || fail "stdout is not empty"
    ;;

  missing-model)
    run run -m "$work/no-such-model.gguf" -p "x" -n 4
    expect_rc 1 "run -m missing"
    grep -q "^kvrt: " "$err" || fail "no 'kvrt: ' error line"
    grep -q "no-such-model.gguf" "$err" || fail "the error does not name the file"
    [ ! -s "$out" ] || fail "stdout is not empty"
    # No -m, no KVRT_MODEL, and no model beside the working directory or the
    # executable: the message must say how to get one.
    mkdir -p "$work/a/b/c"
    cp "$kvrt" "$work/a/b/c/kvrt"
    (cd "$work/a" && env -u KVRT_MODEL "$work/a/b/c/kvrt" run -p x -n 4 >"$out" 2>"$err")
    rc=$?
    expect_rc 1 "run without a model"
    grep -q "KVRT_MODEL" "$err" || fail "the message does not mention KVRT_MODEL"
    grep -q -- "-m" "$err" || fail "the message does not mention -m"
    grep -q "kvrt synth" "$err" || fail "the message does not mention kvrt synth"
    ;;

  usage)
    run run --bogus-option
    expect_rc 2 "run --bogus-option"
    grep -q -- "--bogus-option" "$err" || fail "the message does not name the option"
    run run -n twelve
    expect_rc 2 "run -n twelve"
    grep -q -- "-n" "$err" || fail "the message does not name -n"
    run bench --kv q5
    expect_rc 2 "bench --kv q5"
    grep -q -- "--kv" "$err" || fail "the message does not name --kv"
    run mem --budget 12X
    expect_rc 2 "mem --budget 12X"
    run frobnicate
    expect_rc 2 "frobnicate"
    run --help
    expect_rc 0 "--help"
    for cmd in run mem synth bench; do
      grep -q "^  $cmd " "$out" || fail "--help does not list $cmd"
      run "$cmd" --help
      expect_rc 0 "$cmd --help"
      grep -q "^usage: kvrt $cmd" "$out" || fail "$cmd --help prints no usage line"
      run --help
    done
    ;;

  mem)
    run mem -m "$model"
    expect_rc 0 mem
    # 5 layers x (K + V) x 4 KV heads x head dim 8 x 4 bytes.
    f32=$((5 * 2 * 4 * 8 * 4))
    f16=$((5 * 2 * 4 * 8 * 2))
    grep -q "^| f32 | $f32 |" "$out" || fail "no f32 row with $f32 bytes/token"
    grep -q "^| f16 | $f16 |" "$out" || fail "no f16 row with $f16 bytes/token"
    # Default budget 1 GiB in whole blocks of 16 tokens; the context 2048 tokens.
    tokens=$(( (1073741824 / (16 * f32)) * 16 ))
    grep -q "^| f32 | $f32 | $((2048 * f32)) ([^)]*) | $tokens |" "$out" ||
      fail "f32 row does not show $((2048 * f32)) bytes for 2048 tokens and $tokens tokens in budget"
    run mem -m "$model" --budget 1M --ctx 100
    expect_rc 0 "mem --budget 1M --ctx 100"
    # 100 tokens need 7 blocks of 16; 1 MiB holds floor(1048576 / 20480) = 51 blocks.
    grep -q "^| f32 | $f32 | $((112 * f32)) ([^)]*) | $((51 * 16)) |" "$out" ||
      fail "f32 row does not show $((112 * f32)) bytes and $((51 * 16)) tokens"
    # Bigger blocks spread q4's per-channel key scales over more tokens:
    # fewer bytes per token, and the budget counted in blocks of 64.
    q4_16=$(awk -F'|' '$2 == " q4 " { print $3 + 0 }' "$out")
    run mem -m "$model" --block-tokens 64
    expect_rc 0 "mem --block-tokens 64"
    q4_64=$(awk -F'|' '$2 == " q4 " { print $3 + 0 }' "$out")
    [ -n "$q4_16" ] && [ -n "$q4_64" ] && [ "$q4_64" -lt "$q4_16" ] ||
      fail "q4 bytes/token with 64-token blocks ($q4_64) not below 16-token blocks' ($q4_16)"
    tokens=$(( (1073741824 / (64 * q4_64)) * 64 ))
    grep -q "^| q4 | $q4_64 | [0-9]* ([^)]*) | $tokens |" "$out" ||
      fail "q4 row with 64-token blocks does not hold $tokens tokens in the budget"
    # Weights: every tensor of the test model is F32.
    params=$(( 512 * 64 * 2 + 64 + 5 * (64 * 2 + 64 * 64 * 2 + 64 * 32 * 2 + 64 * 172 * 3) ))
    grep -q "weights: $params parameters, $((params * 4)) bytes" "$out" ||
      fail "weights line does not show $params parameters and $((params * 4)) bytes"
    ;;

  synth)
    synth=$work/tiny.gguf
    run synth -o "$synth" --dim 64 --layers 5 --heads 8 --kv-heads 4 --ff 172 --vocab 512 --ctx 2048 --type f32 --seed 7
    expect_rc 0 synth
    [ -s "$synth" ] || fail "no file written"
    run run -m "$synth" -p "Once upon a time" -n 16 --seed 3
    expect_rc 0 "run on the synthetic model"
    [ -s "$out" ] || fail "no text generated"
    grep -q "generated" "$err" || fail "no stats on stderr"
    # Same shapes as the test model: same parameter count, bytes and KV sizes.
    run mem -m "$model"
    expect_rc 0 "mem on the test model"
    want=$(grep -E "weights:|^\| f(32|16) \|" "$out")
    run mem -m "$synth"
    expect_rc 0 "mem on the synthetic model"
    got=$(grep -E "weights:|^\| f(32|16) \|" "$out")
    [ "$want" = "$got" ] || fail "shapes differ from the test model: want '$want' got '$got'"
    # Other seeds give other weights; the same seed the same file.
    run synth -o "$work/tiny2.gguf" --dim 64 --layers 5 --heads 8 --kv-heads 4 --ff 172 --vocab 512 --ctx 2048 --type f32 --seed 7
    cmp -s "$synth" "$work/tiny2.gguf" || fail "the same seed wrote a different file"
    run synth -o "$work/tiny3.gguf" --dim 64 --layers 5 --heads 8 --kv-heads 4 --ff 172 --vocab 512 --ctx 2048 --type f32 --seed 8
    ! cmp -s "$synth" "$work/tiny3.gguf" || fail "another seed wrote the same file"
    # Each weight type loads and generates.
    for t in f16 bf16 q8_0; do
      run synth -o "$work/t-$t.gguf" --dim 64 --layers 2 --heads 4 --kv-heads 2 --ff 128 --vocab 300 --ctx 256 --type $t
      expect_rc 0 "synth --type $t"
      run run -m "$work/t-$t.gguf" -p "hello" -n 8
      expect_rc 0 "run on the $t model"
    done
    run synth -o "$work/bad.gguf" --dim 64 --ff 100 --type q8_0
    expect_rc 2 "synth q8_0 with --ff 100"
    ;;

  bench)
    run bench -m "$model" --json -n 4 --depth 0,64 -r 1 -t 1
    expect_rc 0 "bench --json"
    [ "$(wc -l <"$out")" -eq 2 ] || fail "expected 2 JSON lines"
    for key in model weight_bytes kv_bytes_per_token kv threads depth prefill_tok_s decode_tok_s; do
      [ "$(grep -c "\"$key\":" "$out")" -eq 2 ] || fail "key $key missing from a line"
    done
    grep -q '"depth":0,' "$out" || fail "no depth 0 line"
    grep -q '"depth":64,' "$out" || fail "no depth 64 line"
    grep -q '"kv_bytes_per_token":640,' "$out" || fail "f16 KV bytes per token is not 640"
    grep -q '"threads":1,' "$out" || fail "threads is not 1"
    if command -v python3 >/dev/null; then
      python3 -c '
import json, sys
for line in open(sys.argv[1]):
    o = json.loads(line)
    assert o["prefill_tok_s"] > 0 and o["decode_tok_s"] > 0, o
    # Attention over the cache is a part of each step, never all of it.
    assert 0 < o["attention_ms_per_token"] < o["ms_per_token"], o
    assert o["attention_bytes_s"] > 0, o
    # Single-step medians: a step is slower than its attention, and the
    # median step is within the spread of the mean (4 steps, 1 run).
    assert 0 < o["p50_attention_ms"] < o["p50_ms_per_token"], o
    assert o["p50_ms_per_token"] < 4 * o["ms_per_token"], o
' "$out" || fail "a line is not valid JSON with positive speeds and attention inside the step"
    fi
    # Bigger blocks spread q8's per-block key scales over more tokens:
    # 5 layers x 4 heads x (K 32x8 + 8 f16 scales, V 32x8 + 32 f16 scales)
    # / 32 = 370 bytes per token (380 with the default 16-token blocks).
    run bench -m "$model" --json -n 2 --depth 40 -r 1 -t 1 --kv q8 --block-tokens 32
    expect_rc 0 "bench --block-tokens 32"
    grep -q '"kv_bytes_per_token":370,' "$out" || fail "q8 with 32-token blocks is not 370 bytes per token"
    run bench -m "$model" -n 2 --depth 40 -r 1 -t 1 --block-tokens 0
    expect_rc 2 "bench --block-tokens 0"
    grep -q -- "--block-tokens" "$err" || fail "the message does not name --block-tokens"
    run bench -m "$model" -n 2 --depth 40 -r 1 -t 1 --block-tokens 1025
    expect_rc 2 "bench --block-tokens 1025"
    # One shared prefill to the largest depth (600 > --prefill 512), rewound
    # for every depth and repeat, q8 included (rewinds into quantized blocks);
    # depths given in any order run deepest first.
    run bench -m "$model" --json -n 4 --depth 40,600,0 -r 2 -t 1 --one-prefill --kv f16,q8
    expect_rc 0 "bench --one-prefill"
    [ "$(wc -l <"$out")" -eq 6 ] || fail "expected 6 JSON lines from --one-prefill"
    [ "$(grep -o '"depth":[0-9]*' "$out" | head -3 | tr '\n' ' ')" = '"depth":600 "depth":40 "depth":0 ' ] ||
      fail "--one-prefill rows are not deepest first"
    [ "$(grep -c '"prefill_tokens":600,' "$out")" -eq 6 ] || fail "--one-prefill rows do not all name the one 600-token prefill"
    grep -q '"kv":"q8","threads":1,"depth":40,' "$out" || fail "no q8 row at depth 40"
    # --interleave: the formats' steps alternate in one runtime; rows come
    # deepest first, formats in the order given, each naming the shared
    # prefill and saying it was interleaved.
    run bench -m "$model" --json -n 4 --depth 0,40 -r 2 -t 1 --interleave --kv q8,f16
    expect_rc 0 "bench --interleave"
    [ "$(grep -o '"kv":"[a-z0-9/]*","threads":1,"depth":[0-9]*' "$out" | tr '\n' ' ')" = \
      '"kv":"q8","threads":1,"depth":40 "kv":"f16","threads":1,"depth":40 "kv":"q8","threads":1,"depth":0 "kv":"f16","threads":1,"depth":0 ' ] ||
      fail "--interleave rows are not deepest first with the formats in order"
    [ "$(grep -c '"interleaved":true,' "$out")" -eq 4 ] || fail "--interleave rows do not say interleaved"
    [ "$(grep -c '"prefill_tokens":512,' "$out")" -eq 4 ] || fail "--interleave rows do not name the one 512-token prefill"
    # A format the library refuses is reported; the others still run.
    run bench -m "$model" -n 2 --depth 8 -r 1 -t 1 --interleave --kv f16,bf16
    expect_rc 1 "bench --interleave with bf16"
    grep -q "kv bf16" "$err" || fail "the refused format is not named"
    grep -q "^| f16 | 1 | 8 |" "$out" || fail "no f16 row beside the refused format"
    run bench -m "$model" -n 2 --depth 16 -r 1 -t 1 --bandwidth --bandwidth-size 16M
    expect_rc 0 "bench --bandwidth"
    grep -q "memory read bandwidth" "$out" || fail "no bandwidth line"
    grep -q "| roofline tok/s | roofline frac |" "$out" || fail "no roofline columns"
    grep -q "^| f16 | 1 | 16 |" "$out" || fail "no row for f16, 1 thread, depth 16"
    ;;

  eval-kv)
    # q8 stays closer to the f32 cache than q4 (KL and top-1 of a short
    # generated stream), every key is there, and the block size is the one
    # asked for.
    run eval-kv -m "$model" --kv q8,q4 --generate 300 --json -t 1
    expect_rc 0 "eval-kv --json"
    [ "$(wc -l <"$out")" -eq 2 ] || fail "expected 2 JSON lines from eval-kv"
    if command -v python3 >/dev/null; then
      python3 -c '
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
q8, q4 = rows
assert q8["kv"] == "q8" and q4["kv"] == "q4", rows
for r in rows:
    assert r["tokens"] == 300 and r["block_tokens"] == 16, r
    assert 0 <= r["mean_kl"] <= r["max_kl"] and 0 < r["top1"] <= 1 and r["ppl_ref"] > 1, r
assert q8["mean_kl"] < 1e-3 and q8["top1"] >= 0.98, q8
assert q4["mean_kl"] > q8["mean_kl"], rows
' "$out" || fail "eval-kv JSON does not hold q8 closer to f32 than q4, under q8's KL target"
    fi
    run eval-kv -m "$model" --kv q8 --generate 40 --json -t 1 --block-tokens 32
    expect_rc 0 "eval-kv --block-tokens 32"
    grep -q '"block_tokens":32,' "$out" || fail "eval-kv does not report 32-token blocks"
    run eval-kv -m "$model" --kv q8 --generate 40 --block-tokens 0
    expect_rc 2 "eval-kv --block-tokens 0"
    grep -q -- "--block-tokens" "$err" || fail "the message does not name --block-tokens"
    run eval-kv -m "$model" --generate 40
    expect_rc 2 "eval-kv without --kv"
    grep -q -- "--kv" "$err" || fail "the message does not name --kv"
    run eval-kv -m "$model" --kv q8
    expect_rc 2 "eval-kv without --text or --generate"
    run eval-kv -m "$model" --kv q5 --generate 40
    expect_rc 2 "eval-kv --kv q5"
    ;;

  snapshot)
    # Save after 32 tokens, load and generate 32 more: the two texts joined
    # are the text of one uninterrupted 64-token run (greedy and sampled,
    # f16 and q8 caches).
    p="Once upon a time"
    for opts in "--temp 0" "--temp 0 --kv q8" "--temp 0 --kv q8/q4" "--temp 0.8 --seed 7"; do
      # shellcheck disable=SC2086
      run run -m "$model" -p "$p" -n 64 $opts -t 1
      expect_rc 0 "run -n 64 $opts"
      cp "$out" "$work/full.txt"
      # shellcheck disable=SC2086
      run run -m "$model" -p "$p" -n 32 $opts -t 1 --save "$work/s.kvs"
      expect_rc 0 "run -n 32 $opts --save"
      grep -q "saved 37 tokens to" "$err" || fail "stderr does not report 37 saved tokens (5 prompt + 32)"
      cp "$out" "$work/part1.txt"
      run run -m "$model" --load "$work/s.kvs" -n 32 -t 1
      expect_rc 0 "run --load ($opts)"
      cat "$work/part1.txt" "$out" >"$work/joined.txt"
      cmp -s "$work/full.txt" "$work/joined.txt" || fail "save + load ($opts) differs from one run"
      [ -s "$out" ] || fail "no continuation text ($opts)"
    done
    # Sampler options given with --load replace the saved sampler: greedy now.
    run run -m "$model" --load "$work/s.kvs" -n 32 -t 1 --temp 0
    expect_rc 0 "run --load --temp 0"
    cmp -s "$work/joined.txt" <(cat "$work/part1.txt" "$out") && fail "--temp 0 after a sampled save changed nothing"
    run run -m "$model" --load "$work/s.kvs" -p x -n 4
    expect_rc 2 "run --load with -p"
    run run -m "$model" --load "$work/missing.kvs" -n 4
    expect_rc 1 "run --load missing file"
    grep -q "missing.kvs" "$err" || fail "the error does not name the missing snapshot"
    ;;

  inspect)
    run run -m "$model" -p "Once upon a time" -n 20 --temp 0.5 --top-k 9 --seed 3 --kv q8 --save "$work/q.kvs"
    expect_rc 0 "run --save"
    run inspect "$work/q.kvs"
    expect_rc 0 "inspect"
    for want in "format version  1" "required 0x00000001" "25 of n_ctx" "q8" "blocks of 16 tokens" \
                "temperature 0.5, top-k 9" "seed 3" "  tokens " "  KV " "  stage " "  total " "all verified"; do
      grep -qF -- "$want" "$out" || fail "inspect output lacks '$want'"
    done
    run inspect "$work/q.kvs" -m "$model"
    expect_rc 0 "inspect -m"
    grep -q "made with this model" "$out" || fail "inspect -m does not confirm the model"
    # One flipped byte in the middle of the KV section's compressed data.
    cp "$work/q.kvs" "$work/bad.kvs"
    size=$(wc -c <"$work/bad.kvs")
    python3 -c '
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 0x40; open(p, "wb").write(b)
' "$work/bad.kvs" || fail "cannot corrupt the copy"
    run inspect "$work/bad.kvs"
    [ "$rc" -ne 0 ] || fail "inspect accepted a corrupted snapshot"
    grep -q "corrupt" "$err" || fail "the error does not give the corrupt status"
    grep -q "section" "$err" || fail "the error does not name the section"
    grep -q "format version  1" "$out" || fail "the header of the damaged file is not printed"
    head -c $((size - 20)) "$work/q.kvs" >"$work/short.kvs"
    run inspect "$work/short.kvs"
    [ "$rc" -ne 0 ] || fail "inspect accepted a truncated snapshot"
    grep -q "truncated" "$err" || fail "the error does not say truncated"
    run inspect
    expect_rc 2 "inspect without a file"
    ;;

  store)
    # Save into a store after 32 tokens, continue from it for 16 and save
    # back under the same name (only the new blocks are written), continue
    # for 16 more: the three texts joined are one uninterrupted 64-token run.
    p="Once upon a time"
    st="$work/store"
    for opts in "--temp 0" "--temp 0 --kv q8" "--temp 0.8 --seed 7"; do
      rm -rf "$st"
      # shellcheck disable=SC2086
      run run -m "$model" -p "$p" -n 64 $opts -t 1
      expect_rc 0 "run -n 64 $opts"
      cp "$out" "$work/full.txt"
      # shellcheck disable=SC2086
      run run -m "$model" -p "$p" -n 32 $opts -t 1 --store "$st" --name story
      expect_rc 0 "run -n 32 $opts --store"
      grep -q "saved 37 tokens to store .* as story: 2 blocks (2 written, 0 already stored)" "$err" ||
        fail "stderr does not report 37 tokens in 2 new blocks"
      cp "$out" "$work/part1.txt"
      run run -m "$model" --load-store "$st" --store "$st" --name story -n 16 -t 1
      expect_rc 0 "run --load-store --store ($opts)"
      grep -q "saved 53 tokens to store .* as story: 3 blocks (1 written, 2 already stored)" "$err" ||
        fail "the second save does not write just the one new block"
      cp "$out" "$work/part2.txt"
      run run -m "$model" --load-store "$st" --name story -n 16 -t 1
      expect_rc 0 "run --load-store ($opts)"
      cat "$work/part1.txt" "$work/part2.txt" "$out" >"$work/joined.txt"
      cmp -s "$work/full.txt" "$work/joined.txt" || fail "store save + load ($opts) differs from one run"
    done
    # Inspection of the store folder: names, tokens, blocks, verified.
    run run -m "$model" -p "Once upon a time there" -n 8 -t 1 --store "$st" --name other
    expect_rc 0 "run --store (second name)"
    run inspect "$st" -m "$model"
    expect_rc 0 "inspect store"
    grep -qE "^  story +53 +3 +f16" "$out" || fail "inspect does not list story with 53 tokens in 3 blocks"
    grep -qE "^  other +" "$out" || fail "inspect does not list other"
    grep -q "all verified; made with this model" "$out" || fail "inspect does not confirm the store"
    python3 -c '
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[200] ^= 0x40; open(p, "wb").write(b)
' "$st/blocks.kvp" || fail "cannot corrupt the pack"
    run inspect "$st"
    expect_rc 1 "inspect of a damaged store"
    grep -q "corrupt data: .*block 0" "$out" || fail "inspect does not name the damaged block"
    # Bad uses: a name without a store, a store without a name, a bad name,
    # a missing name.
    run run -m "$model" -p "$p" -n 4 --name x
    expect_rc 2 "run --name without a store"
    run run -m "$model" -p "$p" -n 4 --store "$st"
    expect_rc 2 "run --store without --name"
    run run -m "$model" -p "$p" -n 4 --store "$st" --name ../escape
    expect_rc 1 "run --store with a bad name"
    grep -q "invalid argument" "$err" || fail "a bad name is not refused as an invalid argument"
    [ ! -e "$work/escape.kvm" ] || fail "a name escaped the store folder"
    run run -m "$model" --load-store "$st" --name nobody -n 4
    expect_rc 1 "run --load-store with a missing name"
    grep -q "nobody" "$err" || fail "the error does not name the missing session"
    ;;

  *)
    echo "unknown case $case_name" >&2
    exit 2
    ;;
esac
echo "ok ($case_name)"
