# Stage helpers for recipes; source it after parse_options.sh:
#
#   . ../../local/stages.sh
#   timing_log=$exp_dir/stage_times.tsv
#   run_stage 3 "$exp_dir/.stage3.done" "train the model" stage3   # runs the function stage3
#
# run_stage N MARKER WHAT CMD...: runs CMD when stage <= N <= stop_stage, then writes MARKER.
# In a plain rerun a stage whose MARKER exists is skipped ("already done"); an explicit
# `--stage N` (in given_options) reruns stages N..stop_stage whatever their markers say, as
# Kaldi's --stage does. While a stage runs, `timed` prefixes a command so that its wall time
# and peak memory are appended to $timing_log as "stage N" (local/timed.py):
#   timed "$python" local/prepare.py ...
__stages_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
__timed_label=
timed() {  # timed CMD...: run CMD, logging its time and peak memory under the current stage
    "${python:-python3}" "$__stages_dir/timed.py" --label "${__timed_label:-command}" \
        ${timing_log:+--log "$timing_log"} -- "$@"
}
run_stage() {
    local n=$1 marker=$2 what=$3
    shift 3
    (( stage <= n && n <= stop_stage )) || return 0
    echo "stage $n: $what"
    local explicit=false
    [[ " ${given_options[*]-} " == *" stage "* ]] && explicit=true
    if [[ -f "$marker" && "$explicit" == false ]]; then
        echo "stage $n: already done ($marker exists), skipped"
        return 0
    fi
    rm -f "$marker"
    local start=$SECONDS
    __timed_label="stage $n"
    "$@"
    __timed_label=
    mkdir -p "$(dirname "$marker")"
    date > "$marker"
    echo "stage $n took $(( SECONDS - start )) s${timing_log:+ (times and peak memory: $timing_log)}"
}
