#!/bin/bash
# The "transformation" the real pilot runs (PANDA-CLIENTS Appendix A); the pilot copies it from
# $HARVESTER_WORKDIR instead of downloading it.  args: <word> <sleep seconds> <exit code> [output file]
echo "hello from payload: args=$*"
echo "PANDAID=$PANDAID PWD=$PWD"
sleep ${2:-5}
if [ -n "$4" ]; then echo "payload output $(date)" > "$4"; fi
echo '{"exitCode": 0, "exitMsg": "OK"}' > jobReport.json
echo "payload done"
exit ${3:-0}
