"""The local cluster behind infra/local/cluster: a real two-node Kubernetes cluster on this one machine.

`cli` parses the commands; `lifecycle` brings the whole cluster up and down from the parts: `build` (Debian
packages and the cached deps/*.sh builds), `pki`, `network` and `namespaces` (each node's network and mount
namespaces), `cgroups`, `node_config`, `components` (control plane and node daemons, through `daemons`),
`images`, `nfs` (the checkpoint repository) and `sysctls`. `config` says where everything lives. Standard
library only: the entry point runs as root, without Pants.
"""
