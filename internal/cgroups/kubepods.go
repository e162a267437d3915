package cgroups

import "strings"

// Pod names a Kubernetes pod's container by its cgroup.
type Pod struct {
	UID       string // pod UID, e.g. 0f5c0a3e-7f1b-4b6e-9a7d-2c1f0e9b8a77
	Container string // container id (hex), "" for the pod's own cgroup
}

// ParseKubepods reads the pod UID and container id out of a cgroup v2 path
// the kubelet made, with either cgroup driver:
//
//	systemd:  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
//	cgroupfs: /kubepods/burstable/pod<uid>/<id>
//
// Anything else (and anything malformed) is not a pod: ok is false. The path
// comes from /proc of a process the agent controls, so it is parsed as
// untrusted text: only a well-formed UID and hex id are accepted.
func ParseKubepods(path string) (p Pod, ok bool) {
	parts := strings.Split(path, "/")
	start := -1
	for k, c := range parts {
		if c == "kubepods" || c == "kubepods.slice" {
			start = k
			break
		}
	}
	if start < 0 {
		return Pod{}, false
	}
	for k := start + 1; k < len(parts); k++ {
		c := parts[k]
		var uid string
		switch {
		case strings.HasSuffix(c, ".slice") && strings.Contains(c, "-pod"):
			uid = strings.ReplaceAll(strings.TrimSuffix(c[strings.LastIndex(c, "-pod")+4:], ".slice"), "_", "-")
		case strings.HasPrefix(c, "pod"):
			uid = c[3:]
		default:
			continue
		}
		if !isUID(uid) {
			return Pod{}, false
		}
		p.UID = uid
		if k+1 < len(parts) {
			id := parts[k+1]
			if strings.HasSuffix(id, ".scope") {
				id = strings.TrimSuffix(id, ".scope")
				id = id[strings.LastIndex(id, "-")+1:] // cri-containerd-, crio-, docker-
			}
			if isHexID(id) {
				p.Container = id
			}
		}
		return p, true
	}
	return Pod{}, false
}

// isUID accepts the 8-4-4-4-12 hex form Kubernetes gives pods (and static
// pods' 32-hex config hashes).
func isUID(s string) bool {
	if len(s) == 32 {
		return isHexID(s)
	}
	if len(s) != 36 {
		return false
	}
	for k := 0; k < len(s); k++ {
		if k == 8 || k == 13 || k == 18 || k == 23 {
			if s[k] != '-' {
				return false
			}
		} else if !isHex(s[k]) {
			return false
		}
	}
	return true
}

func isHexID(s string) bool {
	if len(s) < 12 || len(s) > 128 {
		return false
	}
	for k := 0; k < len(s); k++ {
		if !isHex(s[k]) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }
