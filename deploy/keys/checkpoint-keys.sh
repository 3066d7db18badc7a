#!/usr/bin/env bash
# The key-encryption keys that seal checkpoints at rest (Secret lpm-checkpoint-keys, mounted by every agent).
#
#   deploy/keys/checkpoint-keys.sh new [-n NAMESPACE] | kubectl apply -f -
#       prints a Secret with one fresh 256-bit key, active. Only for a first install: applying it over an
#       existing Secret would drop the keys older checkpoints need.
#   deploy/keys/checkpoint-keys.sh rotate [-n NAMESPACE]
#       adds a fresh key to the Secret and makes it the active one (kubectl patch). New checkpoints use it
#       within a minute (the kubelet refreshes mounted Secrets; agents re-read the keys at every checkpoint);
#       older checkpoints stay readable while their key stays in the Secret.
#   deploy/keys/checkpoint-keys.sh retire KEY_ID [-n NAMESPACE]
#       removes a key that is no longer active. Checkpoints sealed with it become unreadable for good.
#   deploy/keys/checkpoint-keys.sh list [-n NAMESPACE]
#       the key IDs, and which one is active (never the keys).
#
# Keys never touch the disk or the terminal: they go from openssl straight into the Secret's data. Key IDs are
# the UTC time of their creation (k-YYYYMMDD-HHMMSS). Needs bash, openssl and (but for `new`) kubectl.
set -euo pipefail
secret="lpm-checkpoint-keys"
usage() {
  sed -n '2,18p' "$0" >&2
  exit 2
}
[ $# -ge 1 ] || usage
command="$1"
shift
key_id=""
if [ "$command" = retire ]; then
  [ $# -ge 1 ] || usage
  key_id="$1"
  shift
fi
namespace="lpm-system"
while getopts "n:h" opt; do
  case "$opt" in
    n) namespace="$OPTARG" ;;
    *) usage ;;
  esac
done

new_id() { date -u +k-%Y%m%d-%H%M%S; }
new_key() { openssl rand 32 | base64 -w0; }
b64() { printf '%s' "$1" | base64 -w0; }
active() { kubectl -n "$namespace" get secret "$secret" -o jsonpath='{.data.active}' | base64 -d; }

case "$command" in
  new)
    id="$(new_id)"
    cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: $secret
  namespace: $namespace
  labels:
    app.kubernetes.io/part-of: lpm
    app.kubernetes.io/component: agent
type: Opaque
data:
  active: $(b64 "$id")
  $id: $(new_key)
YAML
    ;;
  rotate)
    previous="$(active)"
    id="$(new_id)"
    if [ "$id" = "$previous" ]; then
      echo "checkpoint-keys.sh: the active key was made this second; try again in a second" >&2
      exit 1
    fi
    kubectl -n "$namespace" patch secret "$secret" --type merge \
      -p "{\"data\":{\"$id\":\"$(new_key)\",\"active\":\"$(b64 "$id")\"}}" >/dev/null
    echo "checkpoint-keys.sh: $id is now the active key (was $previous, still held for older checkpoints)" >&2
    ;;
  retire)
    if [ "$key_id" = "$(active)" ] || [ "$key_id" = active ]; then
      echo "checkpoint-keys.sh: $key_id is the active key; rotate first" >&2
      exit 1
    fi
    kubectl -n "$namespace" patch secret "$secret" --type json \
      -p "[{\"op\":\"remove\",\"path\":\"/data/$key_id\"}]" >/dev/null
    echo "checkpoint-keys.sh: removed $key_id; checkpoints sealed with it can no longer be read" >&2
    ;;
  list)
    current="$(active)"
    # shellcheck disable=SC2016 # a go-template: its $k and $v are kubectl's, not the shell's
    kubectl -n "$namespace" get secret "$secret" -o go-template='{{range $k, $v := .data}}{{$k}}{{"\n"}}{{end}}' \
      | grep -vx active | while read -r id; do
      if [ "$id" = "$current" ]; then echo "$id (active)"; else echo "$id"; fi
    done
    ;;
  *) usage ;;
esac
