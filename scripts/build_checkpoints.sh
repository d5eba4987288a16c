#!/usr/bin/env bash
# Rebuild every shipped checkpoint (odistill/bench/checkpoints/<task>-teacher and <task>-student) from scratch.
#
#   bash scripts/build_checkpoints.sh            all tasks
#   bash scripts/build_checkpoints.sh addition   one task
#
# Each model is trained with its task's recipe (odistill/bench/tasks/<task>.py: teacher_recipe, student_recipe)
# and a fixed seed, saved in bf16 with its tokenizer, and scored on 500 held-out prompts; the scores,
# recipe and training time are written to odistill.json in the checkpoint folder. On a 2-core CPU the
# whole set takes about 10 minutes. Results reproduce the shipped ones within noise (the same seed gives
# the same data and initialisation; CPU kernels may differ in the last bits across machines).
set -euo pipefail
cd "$(dirname "$0")/.."
ODISTILL="${ODISTILL:-.venv/bin/odistill}"
TASKS=("${@:-addition permutations sorting}")
for task in ${TASKS[@]}; do
  "$ODISTILL" train-teacher --task "$task" --out "odistill/bench/checkpoints/$task-teacher" --seed 0
  "$ODISTILL" train-teacher --task "$task" --out "odistill/bench/checkpoints/$task-student" --seed 0 --student
done
"$ODISTILL" eval --task addition --json
