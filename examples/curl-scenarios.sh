#!/usr/bin/env bash
# The seed's five CRDT scenarios as curl commands, for a cluster started with
#     unison up examples/ad-campaign.yaml
# Needs bash, curl and base64. Each step is echoed with its answer. At the end it reads
# values back from the relayer and prints the CRDT client's converged /state.
#
# Addresses default to the seed's ports; override them to target other ports, e.g.
#     DC1=http://localhost:28001 DC2=... RELAYER=... CLIENT=... bash examples/curl-scenarios.sh
set -euo pipefail

DC1=${DC1:-http://localhost:8001}
DC2=${DC2:-http://localhost:8002}
RELAYER=${RELAYER:-http://localhost:8003}
CLIENT=${CLIENT:-http://localhost:8090}

# The seed pipes through plain `base64`; GNU base64 wraps lines at 76 characters, which
# would split the request body, so drop the newlines.
b64() { base64 | tr -d '\n'; }

# Show each answer on its own line and stop at the first failed request.
curl() { command curl -sS --fail-with-body "$@"; echo; }

step() { printf '\n== %s\n' "$*"; }

step "Scenario 1: Basic LWW-Register update"
step "Write \"online\" to DC1 (timestamp: 1698765432000)"
curl -X PUT "$DC1/api/v1/ad-campaign-dc1/kv/lww:user-status" \
  -H "Content-Type: application/json" \
  -d '{"value": "'$(echo -n '{"value":"online","timestamp":1698765432000,"replica":"ad-campaign-dc1"}' | b64)'"}'

step "Write \"away\" to DC2 (timestamp: 1698765433000)"
curl -X PUT "$DC2/api/v1/ad-campaign-dc2/kv/lww:user-status" \
  -H "Content-Type: application/json" \
  -d '{"value": "'$(echo -n '{"value":"away","timestamp":1698765433000,"replica":"ad-campaign-dc2"}' | b64)'"}'

step "Scenario 2: Concurrent writes with the same timestamp"
TIMESTAMP=$(date +%s)000
step "Write to DC1 (timestamp: $TIMESTAMP)"
curl -X PUT "$DC1/api/v1/ad-campaign-dc1/kv/lww:config" \
  -H "Content-Type: application/json" \
  -d '{"value": "'$(echo -n "{\"value\":\"DC1 wins?\",\"timestamp\":$TIMESTAMP,\"replica\":\"ad-campaign-dc1\"}" | b64)'"}'

step "Write to DC2 (same timestamp)"
curl -X PUT "$DC2/api/v1/ad-campaign-dc2/kv/lww:config" \
  -H "Content-Type: application/json" \
  -d '{"value": "'$(echo -n "{\"value\":\"DC2 wins!\",\"timestamp\":$TIMESTAMP,\"replica\":\"ad-campaign-dc2\"}" | b64)'"}'

step "Scenario 3: Distributed counter (G-Counter)"
step "DC1 serves 5 requests"
curl -X PUT "$DC1/api/v1/ad-campaign-dc1/kv/counter:page-views" \
  -H "Content-Type: application/json" \
  -d '{"value": "'$(echo -n '{"replica":"ad-campaign-dc1","count":5}' | b64)'"}'

step "DC2 serves 3 requests"
curl -X PUT "$DC2/api/v1/ad-campaign-dc2/kv/counter:page-views" \
  -H "Content-Type: application/json" \
  -d '{"value": "'$(echo -n '{"replica":"ad-campaign-dc2","count":3}' | b64)'"}'

step "Scenario 4: Out-of-order delivery (stale write)"
step "Write NEW value to DC1 (timestamp: 2000)"
curl -X PUT "$DC1/api/v1/ad-campaign-dc1/kv/lww:feature-flag" \
  -H "Content-Type: application/json" \
  -d '{"value": "'$(echo -n '{"value":true,"timestamp":2000,"replica":"ad-campaign-dc1"}' | b64)'"}'

step "Write OLD value to DC2 (stale, timestamp: 1000)"
curl -X PUT "$DC2/api/v1/ad-campaign-dc2/kv/lww:feature-flag" \
  -H "Content-Type: application/json" \
  -d '{"value": "'$(echo -n '{"value":false,"timestamp":1000,"replica":"ad-campaign-dc2"}' | b64)'"}'

step "Scenario 5: Multiple counters operating independently"
curl -X PUT "$DC1/api/v1/ad-campaign-dc1/kv/counter:api-calls" \
  -H "Content-Type: application/json" \
  -d '{"value": "'$(echo -n '{"replica":"ad-campaign-dc1","count":100}' | b64)'"}'

curl -X PUT "$DC2/api/v1/ad-campaign-dc2/kv/counter:api-calls" \
  -H "Content-Type: application/json" \
  -d '{"value": "'$(echo -n '{"replica":"ad-campaign-dc2","count":75}' | b64)'"}'

curl -X PUT "$DC1/api/v1/ad-campaign-dc1/kv/counter:db-queries" \
  -H "Content-Type: application/json" \
  -d '{"value": "'$(echo -n '{"replica":"ad-campaign-dc1","count":250}' | b64)'"}'

step "Read from the relayer (read-only): ad-campaign-dc1 lww:user-status"
sleep 1  # replication and notifications are asynchronous; give them a moment
ANSWER=$(curl "$RELAYER/api/v1/ad-campaign-dc1/kv/lww:user-status")
echo "$ANSWER"
VALUE=$(echo "$ANSWER" | sed -n 's/.*"value": *"\([^"]*\)".*/\1/p')
step "Decoded value"
echo "$VALUE" | base64 -d
echo

step "The CRDT client's converged state ($CLIENT/state)"
curl "$CLIENT/state"
