#!/usr/bin/env bash
# Prints the three TLS Secrets LPM's controller and agents use, as YAML for `kubectl apply -f -`:
#
#   deploy/certs/generate.sh [-n NAMESPACE] [-d DAYS] | kubectl apply -f -
#
#   lpm-agent-tls                 every agent's certificate (name "lpm-agent"; the controller verifies
#                                 that name, not the node address), serving and, towards its peer agents
#                                 (checkpoints pushed node to node), as a client; + the CA that signs them all
#   lpm-controller-agent-client   the controller's client certificate + the CA that signs the agents' certificates
#   lpm-controller-webhook-tls    the controller's admission webhook serving certificate (name
#                                 lpm-controller-webhook.NAMESPACE.svc); its CA goes into the webhooks' caBundle
#
# One private CA made here signs both; its key is discarded when the script exits, so rotating means running the
# script again and restarting the pods. Nothing is written outside a private temporary directory, and no key ever
# goes into the repository. Needs openssl and bash only.
set -euo pipefail
namespace="lpm-system"
days=365
while getopts "n:d:h" opt; do
  case "$opt" in
    n) namespace="$OPTARG" ;;
    d) days="$OPTARG" ;;
    *)
      sed -n '2,15p' "$0" >&2
      exit 2
      ;;
  esac
done

work="$(mktemp -d "${TMPDIR:-/tmp}/lpm-certs.XXXXXX")"
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"
cd "$work"

quiet() { "$@" >/dev/null 2>&1 || {
  echo "generate.sh: failed: $*" >&2
  "$@" >&2
  exit 1
}; }

quiet openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
  -days "$days" -subj "/O=lpm/CN=lpm-ca" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign"

issue() { # name, extendedKeyUsage, subjectAltName
  quiet openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.csr" \
    -subj "/O=lpm/CN=$1"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s\n' \
    "$2" "${3:+subjectAltName=$3}" >"$1.ext"
  quiet openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile "$1.ext" -out "$1.crt"
}
issue lpm-agent serverAuth,clientAuth "DNS:lpm-agent,DNS:lpm-agent.$namespace.svc"
issue lpm-controller clientAuth ""
issue lpm-controller-webhook serverAuth "DNS:lpm-controller-webhook.$namespace.svc"

b64() { base64 -w0 <"$1"; }
secret() { # name, cert basename, component
  cat <<YAML
---
apiVersion: v1
kind: Secret
metadata:
  name: $1
  namespace: $namespace
  labels:
    app.kubernetes.io/part-of: lpm
    app.kubernetes.io/component: $3
type: kubernetes.io/tls
data:
  tls.crt: $(b64 "$2.crt")
  tls.key: $(b64 "$2.key")
  ca.crt: $(b64 ca.crt)
YAML
}
secret lpm-agent-tls lpm-agent agent
secret lpm-controller-agent-client lpm-controller controller
secret lpm-controller-webhook-tls lpm-controller-webhook controller
