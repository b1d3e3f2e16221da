"""The Pod Security Standards' `restricted` profile (which includes `baseline`), as published in
the Kubernetes documentation (policy version "latest", 1.30+), checked on a pod spec. Each rule
returns the fields that break it; a pod passes when none does. This is what the API server's
PodSecurity admission would answer for a namespace labelled `enforce: restricted`.
"""

from __future__ import annotations

from typing import Any, Iterator

BASELINE_CAPS = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


def _containers(pod: dict) -> Iterator[tuple[str, dict]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod.get(kind) or []:
            yield f"{kind}[{c['name']}]", c


def violations(pod: dict, annotations: dict[str, str] | None = None, level: str = "restricted") -> list[str]:
    """Every rule of the profile `level` (baseline, or restricted, which includes baseline) that
    the pod spec breaks, as `rule: field`."""
    if level not in ("baseline", "restricted"):
        raise ValueError(f"unknown Pod Security level {level!r}")
    out = _baseline(pod, annotations or {})
    if level == "restricted":
        out += _restricted(pod)
    return sorted(set(out))


def _baseline(pod: dict, annotations: dict[str, str]) -> list[str]:
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    containers = list(_containers(pod))
    scs = [(name, c.get("securityContext") or {}) for name, c in containers]
    if (psc.get("windowsOptions") or {}).get("hostProcess") or any(
        (sc.get("windowsOptions") or {}).get("hostProcess") for _, sc in scs
    ):
        out.append("HostProcess: windowsOptions.hostProcess")
    out += [f"Host Namespaces: {k}" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    out += [f"Privileged Containers: {n}.privileged" for n, sc in scs if sc.get("privileged")]
    for n, sc in scs:
        added = set((sc.get("capabilities") or {}).get("add") or [])
        out += [f"Capabilities: {n} adds {cap}" for cap in sorted(added - BASELINE_CAPS)]
    out += [f"HostPath Volumes: {v['name']}" for v in pod.get("volumes") or [] if "hostPath" in v]
    out += [f"Host Ports: {n}" for n, c in containers for p in c.get("ports") or [] if p.get("hostPort")]
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and value not in ("runtime/default",):
            if not value.startswith("localhost/"):
                out.append(f"AppArmor: {key}")
    for n, sc in [("pod", psc), *scs]:
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"AppArmor: {n}.appArmorProfile")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES or se.get("user") or se.get("role"):
            out.append(f"SELinux: {n}.seLinuxOptions")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"Seccomp: {n}.seccompProfile Unconfined")
    out += [f"/proc Mount Type: {n}" for n, sc in scs if sc.get("procMount", "Default") != "Default"]
    out += [f"Sysctls: {s['name']}" for s in psc.get("sysctls") or [] if s["name"] not in SAFE_SYSCTLS]
    return out


def _restricted(pod: dict) -> list[str]:
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    scs = [(name, c.get("securityContext") or {}) for name, c in _containers(pod)]
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"Volume Types: {v['name']} ({', '.join(sorted(kinds))})")
    out += [f"Privilege Escalation: {n}" for n, sc in scs if sc.get("allowPrivilegeEscalation") is not False]
    for n, sc in scs:
        if sc.get("runAsNonRoot") is False or (
            sc.get("runAsNonRoot") is not True and psc.get("runAsNonRoot") is not True
        ):
            out.append(f"Running as Non-root: {n}")
    if psc.get("runAsNonRoot") is False:
        out.append("Running as Non-root: pod")
    out += [f"Running as Non-root user: {n}.runAsUser 0" for n, sc in [("pod", psc), *scs] if sc.get("runAsUser") == 0]
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    for n, sc in scs:
        kind = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if kind not in ("RuntimeDefault", "Localhost"):
            out.append(f"Seccomp: {n} has no RuntimeDefault/Localhost profile")
    for n, sc in scs:
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"Capabilities: {n} does not drop ALL")
        out += [f"Capabilities: {n} adds {cap}" for cap in caps.get("add") or [] if cap != "NET_BIND_SERVICE"]
    return out


def pod_templates(docs: list[dict]) -> Iterator[tuple[str, dict, dict[str, Any]]]:
    """(object, pod spec, pod annotations) of every pod template in rendered manifests."""
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet"):
            tpl = d["spec"]["template"]
            yield name, tpl["spec"], (tpl.get("metadata") or {}).get("annotations") or {}
        elif d["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime"):
            for rj in d["spec"]["template"]["spec"]["replicatedJobs"]:
                tpl = rj["template"]["spec"]["template"]
                yield f"{name}/{rj['name']}", tpl["spec"], (tpl.get("metadata") or {}).get("annotations") or {}
