#!/usr/bin/env bash
# Installs (or removes) lpm-runc and the containerd runtime handler `lpm` on THIS node; run it as root on each
# node that should receive pods through LPM's live engine. Nothing else on the node changes.
#
#   deploy/node/lpm-runc-node.sh install [LPM_RUNC_BINARY]   (default: build it with src/go/lpm-runc/build.sh)
#   deploy/node/lpm-runc-node.sh uninstall
#   deploy/node/lpm-runc-node.sh status
#
# install: copies the binary to /opt/lpm/bin/lpm-runc and writes the handler to a containerd drop-in,
# /etc/containerd/conf.d/lpm.toml (containerd 2.x, config version 3). containerd reads drop-ins only when its
# config.toml imports them; the script says so when it does not and prints the line to add. Restart containerd
# afterwards (systemctl restart containerd): running containers keep running. Then the kubelet reports the
# handler in the Node's status.runtimeHandlers, and LPM's Auto engine picks Live for migrations to this node.
# It also installs the CRIU side of moving TCP connections: the action script /opt/lpm/bin/lpm-criu-action and
# /etc/criu/runc.conf naming it (tcp-established, skip-in-flight, network-lock skip; and, for post-copy's page
# server, tls with the agent's certificate files in /var/lib/lpm/tls), which runc hands to CRIU for every
# checkpoint and restore on the node. An existing runc.conf that LPM did not write is left alone; the script
# prints the lines to add to it.
# For post-copy (CRIU lazy pages) it raises fs.pipe-max-size to 4 MiB (CRIU's page pipes) through
# /etc/sysctl.d/90-lpm-post-copy.conf, and applies it now when the value is lower.
# uninstall removes exactly those files (drain LPM-restored pods first: they run under the handler).
set -euo pipefail

BIN=/opt/lpm/bin/lpm-runc
ACTION=/opt/lpm/bin/lpm-criu-action
CRIU_CONF=/etc/criu/runc.conf
MARK="# Written by LPM (deploy/node/lpm-runc-node.sh)"
DROPIN=/etc/containerd/conf.d/lpm.toml
SYSCTL_CONF=/etc/sysctl.d/90-lpm-post-copy.conf
CONFIG=${CONTAINERD_CONFIG:-/etc/containerd/config.toml}
RUNC=${LPM_RUNC_RUNC:-$(command -v runc || echo /usr/sbin/runc)}
here=$(cd "$(dirname "$0")" && pwd)

die() {
  echo "lpm-runc-node: $*" >&2
  exit 1
}
[ "$(id -u)" = 0 ] || die "run as root (it writes /opt/lpm and /etc/containerd)"

case "${1:-}" in
  install)
    src=${2:-}
    if [ -z "$src" ]; then
      src=$("$here/../../src/go/lpm-runc/build.sh" | tail -1) || die "building lpm-runc failed (Go needed, or pass a binary)"
    fi
    [ -x "$src" ] || die "$src is not an executable"
    [ -x "$RUNC" ] || die "runc not found at $RUNC (set LPM_RUNC_RUNC); lpm-runc passes every command to it"
    install -d -m 0755 "$(dirname "$BIN")" "$(dirname "$DROPIN")"
    install -m 0755 "$src" "$BIN.new" && mv -f "$BIN.new" "$BIN"
    cat >"$DROPIN.new" <<TOML
# Written by LPM (deploy/node/lpm-runc-node.sh); removed by its uninstall.
version = 3
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.lpm]
  runtime_type = "io.containerd.runc.v2"
  pod_annotations = ["lpm.my.domain/*"]
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.lpm.options]
    BinaryName = "$BIN"
TOML
    mv -f "$DROPIN.new" "$DROPIN"
    echo "installed $BIN and $DROPIN"
    install -m 0755 "$here/lpm-criu-action" "$ACTION.new" && mv -f "$ACTION.new" "$ACTION"
    conf="$MARK; removed by its uninstall.
tcp-established
skip-in-flight
network-lock skip
action-script $ACTION
tls
tls-cacert /var/lib/lpm/tls/ca.crt
tls-cert /var/lib/lpm/tls/tls.crt
tls-key /var/lib/lpm/tls/tls.key
tls-no-cn-verify"
    if [ -e "$CRIU_CONF" ] && ! head -n 1 "$CRIU_CONF" | grep -qF "$MARK"; then
      echo "$CRIU_CONF exists and is not LPM's: add these lines to it (pods with TCP connections move then):"
      printf '%s\n' "$conf" | tail -n 9 | sed 's/^/  /'
    else
      install -d -m 0755 "$(dirname "$CRIU_CONF")"
      printf '%s\n' "$conf" >"$CRIU_CONF.new" && mv -f "$CRIU_CONF.new" "$CRIU_CONF"
      echo "installed $ACTION and $CRIU_CONF"
    fi
    install -d -m 0755 "$(dirname "$SYSCTL_CONF")"
    printf '%s\n%s\n' "$MARK; removed by its uninstall. CRIU's lazy pages (post-copy) need 4 MiB pipes." \
      "fs.pipe-max-size = 4194304" >"$SYSCTL_CONF"
    if [ "$(cat /proc/sys/fs/pipe-max-size)" -lt 4194304 ]; then echo 4194304 >/proc/sys/fs/pipe-max-size; fi
    echo "installed $SYSCTL_CONF (fs.pipe-max-size = 4194304, applied)"
    if [ "$RUNC" != /usr/sbin/runc ]; then
      echo "note: runc is at $RUNC; lpm-runc looks for /usr/sbin/runc unless LPM_RUNC_RUNC is set for containerd"
    fi
    if ! grep -qsE "^imports *=.*conf\.d" "$CONFIG"; then
      echo "containerd does not import drop-ins yet: add this line at the top of $CONFIG:"
      echo "  imports = [\"/etc/containerd/conf.d/*.toml\"]"
    fi
    echo "then: systemctl restart containerd (running containers keep running), and check:"
    echo "  kubectl get node $(hostname) -o jsonpath='{.status.runtimeHandlers[*].name}'   # lists lpm"
    ;;
  uninstall)
    rm -f "$BIN" "$DROPIN" "$ACTION" "$SYSCTL_CONF"
    if head -n 1 "$CRIU_CONF" 2>/dev/null | grep -qF "$MARK"; then rm -f "$CRIU_CONF"; fi
    rmdir --ignore-fail-on-non-empty "$(dirname "$BIN")" 2>/dev/null || true
    echo "removed $BIN, $ACTION, $DROPIN, $SYSCTL_CONF and LPM's $CRIU_CONF; restart containerd to drop the handler (fs.pipe-max-size keeps its value until the next boot)"
    ;;
  status)
    for f in "$BIN" "$DROPIN" "$ACTION" "$CRIU_CONF" "$SYSCTL_CONF"; do
      if [ -e "$f" ]; then echo "present: $f"; else echo "missing: $f"; fi
    done
    ;;
  *)
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
