# Shared helpers of the stand-in scheduler commands (sourced, not executed).
# Jobs run locally in the background; their state lives in $HPC_STANDIN_STATE:
#   <id>.rc (exit status, written when the job ends), <id>.pid, <id>.args (command line).
state="${HPC_STANDIN_STATE:?HPC_STANDIN_STATE must name a writable folder for the stand-in scheduler}"
mkdir -p "$state"

next_job_id() {
    (
        flock 9
        n=$(cat "$state/counter" 2>/dev/null || echo 1000)
        n=$((n + 1))
        echo "$n" >"$state/counter"
        echo "$n"
    ) 9>"$state/lock"
}
