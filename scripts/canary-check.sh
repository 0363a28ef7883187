#!/usr/bin/env bash
# Canary deploy of the order API, judged by Prometheus (the pipeline's
# deploy-prod job; docs/operations.md "Deploys").
#
#   scripts/canary-check.sh OVERLAY SECONDS
#
# Renders OVERLAY (whose image is already pinned), starts one pod of its
# order API as `oltp-canary` beside the stable pods (the Service sends it
# its share of traffic), and for SECONDS compares the canary with the
# stable pods every minute:
#   - 5xx share of the canary's requests   > max(1%, 2 x stable's)  -> breach
#   - p99 latency of the canary            > max(500 ms, 1.5 x stable's) -> breach
# A breach deletes the canary and exits 1 (nothing else was changed); a
# pass deletes it too and exits 0, and the caller rolls out.
# Needs: kubectl with the cluster's context, curl, jq, PROMETHEUS_URL.
set -euo pipefail
overlay=${1:?usage: canary-check.sh OVERLAY SECONDS}
seconds=${2:?usage: canary-check.sh OVERLAY SECONDS}
prom=${PROMETHEUS_URL:?PROMETHEUS_URL must name the Prometheus that scrapes the cluster}
ns=tributary

query() {
  curl -fsS --get "$prom/api/v1/query" --data-urlencode "query=$1" |
    jq -r '.data.result[0].value[1] // "0"'
}

cleanup() { kubectl -n "$ns" delete deployment oltp-canary --ignore-not-found >/dev/null; }
trap cleanup EXIT

# The canary: the overlay's order API, renamed, one replica, labelled
# track=canary (the stable pods have no track label).
kubectl kustomize "$overlay" |
  yq 'select(.kind == "Deployment" and .metadata.name == "oltp")
      | .metadata.name = "oltp-canary"
      | .spec.replicas = 1
      | .spec.selector.matchLabels.track = "canary"
      | .spec.template.metadata.labels.track = "canary"' |
  kubectl apply -f -
kubectl -n "$ns" rollout status deployment/oltp-canary --timeout=5m

errors='sum(rate(tributary_oltp_requests_total{status=~"5..",TRACK}[5m])) / sum(rate(tributary_oltp_requests_total{TRACK}[5m]))'
p99='histogram_quantile(0.99, sum by (le) (rate(tributary_oltp_request_duration_seconds_bucket{TRACK}[5m])))'
canary='app="oltp",track="canary"'
stable='app="oltp",track=""'

end=$((SECONDS + seconds))
while ((SECONDS < end)); do
  sleep 60
  ce=$(query "${errors//TRACK/$canary}")
  se=$(query "${errors//TRACK/$stable}")
  cl=$(query "${p99//TRACK/$canary}")
  sl=$(query "${p99//TRACK/$stable}")
  echo "canary: 5xx $ce (stable $se), p99 ${cl}s (stable ${sl}s)"
  if awk -v c="$ce" -v s="$se" 'BEGIN { b = 2 * s; if (b < 0.01) b = 0.01; exit !(c > b) }'; then
    echo "canary breach: 5xx share $ce above max(1%, 2 x stable $se): not rolling out" >&2
    exit 1
  fi
  if awk -v c="$cl" -v s="$sl" 'BEGIN { b = 1.5 * s; if (b < 0.5) b = 0.5; exit !(c > b) }'; then
    echo "canary breach: p99 ${cl}s above max(0.5 s, 1.5 x stable ${sl}s): not rolling out" >&2
    exit 1
  fi
done
echo "canary passed ${seconds}s"
