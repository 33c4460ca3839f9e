#!/usr/bin/env bash
# Stop the RDS instance that holds the firmtopics database, once the job is done.
#
# A stopped RDS instance costs only its storage. Stop it after a run has finished, not
# after an interrupted one: the next spot instance needs the database to resume.
#
# Usage:
#   DB_INSTANCE_ID=firmtopics-db scripts/stop_database.sh          # ask RDS to stop it
#   DB_INSTANCE_ID=firmtopics-db scripts/stop_database.sh --wait   # ...and wait until stopped
#
# Typical use, at the end of an instance's start-up script:
#   docker run ... firmtopics:gpu run --input /corpus/x.jsonl.gz && scripts/stop_database.sh
#
# Needs: the AWS CLI, with credentials allowed rds:StopDBInstance and
# rds:DescribeDBInstances on that instance (an instance role, or AWS_PROFILE), and the
# region (AWS_REGION or the profile's). Exits 0 when the instance is stopped or stopping.
#
# Good to know: RDS starts a stopped instance again by itself after 7 days. Aurora
# clusters are stopped with `aws rds stop-db-cluster` instead.

set -euo pipefail

usage() {
    sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
}

wait_until_stopped=false
for arg in "$@"; do
    case "$arg" in
        --wait) wait_until_stopped=true ;;
        -h|--help) usage; exit 0 ;;
        *) echo "stop_database.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

if [[ -z "${DB_INSTANCE_ID:-}" ]]; then
    echo "stop_database.sh: set DB_INSTANCE_ID to the RDS instance identifier" >&2
    exit 2
fi

status() {
    aws rds describe-db-instances \
        --db-instance-identifier "$DB_INSTANCE_ID" \
        --query 'DBInstances[0].DBInstanceStatus' \
        --output text
}

current="$(status)"
case "$current" in
    stopped)
        echo "RDS instance $DB_INSTANCE_ID is already stopped."
        exit 0
        ;;
    stopping)
        echo "RDS instance $DB_INSTANCE_ID is already stopping."
        ;;
    *)
        echo "Stopping RDS instance $DB_INSTANCE_ID (status: $current)."
        aws rds stop-db-instance --db-instance-identifier "$DB_INSTANCE_ID" >/dev/null
        ;;
esac

if $wait_until_stopped; then
    # The AWS CLI has no "stopped" waiter for RDS instances, so poll. Stopping usually
    # takes a few minutes; give up after 30.
    for _ in $(seq 1 60); do
        current="$(status)"
        if [[ "$current" == "stopped" ]]; then
            echo "RDS instance $DB_INSTANCE_ID is stopped."
            exit 0
        fi
        sleep 30
    done
    echo "stop_database.sh: $DB_INSTANCE_ID still '$current' after 30 minutes" >&2
    exit 1
fi
