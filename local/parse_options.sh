# Kaldi-style option parsing for recipes; source it after declaring the defaults:
#
#   stage=0; stop_stage=9; exp_dir=exp/x; sets=()      # defaults (an array: repeatable)
#   . ../../local/parse_options.sh                      # --stage 3 --exp-dir D --set k=v ...
#
# Every `--some-name VALUE` sets the variable some_name, which must already exist (an unknown
# option is an error naming it); for an array variable the value is appended, so the option
# can be repeated. `--help` / `-h` prints the comment block at the top of the calling script.
# The names of the options given are left in the array `given_options` (a recipe can tell an
# explicit `--stage` from the default). What is not an option stops the parsing and stays in
# "$@".
given_options=()
while (( $# )); do
    case "$1" in
        --help|-h)
            sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
            exit 0 ;;
        --*)
            __name=${1#--}; __name=${__name//-/_}
            if ! declare -p "$__name" >/dev/null 2>&1; then
                echo "$0: error: unknown option $1 (see $0 --help)" >&2
                exit 1
            fi
            if (( $# < 2 )); then
                echo "$0: error: $1 needs a value" >&2
                exit 1
            fi
            if [[ "$(declare -p "$__name")" == "declare -a"* ]]; then
                eval "$__name+=(\"\$2\")"
            else
                printf -v "$__name" '%s' "$2"
            fi
            given_options+=("$__name")
            shift 2 ;;
        *) break ;;
    esac
done
unset __name
