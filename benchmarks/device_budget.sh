# Sourced by the device scripts that run several parts inside one device call: S (the start), and
# run SECONDS COMMAND... which runs COMMAND with min(SECONDS, what is left of BUDGET_S), drops the indented and empty
# lines of its output, keeps the last TAIL (12) lines and says how long the call has run; all of it is appended to
# $OUT/run.log.
S=$(date +%s)
run() {
  local want=$1; shift
  local left=$(( ${BUDGET_S:-570} - $(date +%s) + S ))
  (( left > 20 )) || { echo "## skipped (budget): $*"; return; }
  echo "## $* (limit $(( want < left ? want : left )) s)"
  # the whole output also goes to $OUT/run.log: the device tool returns only the tail of stdout
  timeout $(( want < left ? want : left )) "$@" 2>&1 | tee -a "${OUT:-.}/run.log" | grep -v "^  " | grep -v "^\s*$" \
    | tail -${TAIL:-12}
  echo "## t=$(( $(date +%s) - S )) s"
}
