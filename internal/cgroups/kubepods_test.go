package cgroups

import (
	"strings"
	"testing"
)

const (
	testPodUID = "0f5c0a3e-7f1b-4b6e-9a7d-2c1f0e9b8a77"
	testCtrID  = "4b1c3c2d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b"
)

var kubepodsCases = []struct {
	name, path string
	want       Pod
	ok         bool
}{
	{"systemd containerd", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + strings.ReplaceAll(testPodUID, "-", "_") + ".slice/cri-containerd-" + testCtrID + ".scope", Pod{testPodUID, testCtrID}, true},
	{"systemd guaranteed crio", "/kubepods.slice/kubepods-pod" + strings.ReplaceAll(testPodUID, "-", "_") + ".slice/crio-" + testCtrID + ".scope", Pod{testPodUID, testCtrID}, true},
	{"systemd docker", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + strings.ReplaceAll(testPodUID, "-", "_") + ".slice/docker-" + testCtrID + ".scope", Pod{testPodUID, testCtrID}, true},
	{"cgroupfs", "/kubepods/burstable/pod" + testPodUID + "/" + testCtrID, Pod{testPodUID, testCtrID}, true},
	{"cgroupfs pod only", "/kubepods/pod" + testPodUID, Pod{testPodUID, ""}, true},
	{"nested under a kind node", "/system.slice/docker-abc.scope/kubelet.slice/kubepods/besteffort/pod" + testPodUID + "/" + testCtrID, Pod{testPodUID, testCtrID}, true},
	{"not kubepods", "/user.slice/user-1000.slice/session-2.scope", Pod{}, false},
	{"kubepods qos level only", "/kubepods.slice/kubepods-burstable.slice", Pod{}, false},
	{"bad uid", "/kubepods/podxyz/" + testCtrID, Pod{}, false},
	{"bad container id is dropped", "/kubepods/pod" + testPodUID + "/not-hex", Pod{testPodUID, ""}, true},
	{"empty", "", Pod{}, false},
}

func TestParseKubepods(t *testing.T) {
	for _, tt := range kubepodsCases {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseKubepods(tt.path)
			if ok != tt.ok || got != tt.want {
				t.Fatalf("ParseKubepods(%q) = %+v, %v; want %+v, %v", tt.path, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func FuzzParseKubepods(f *testing.F) {
	for _, tt := range kubepodsCases {
		f.Add(tt.path)
	}
	f.Fuzz(func(t *testing.T, path string) {
		p, ok := ParseKubepods(path)
		if !ok {
			if p != (Pod{}) {
				t.Fatalf("not a pod but %+v", p)
			}
			return
		}
		if !isUID(p.UID) || (p.Container != "" && !isHexID(p.Container)) {
			t.Fatalf("accepted malformed identity %+v from %q", p, path)
		}
		if !strings.Contains(path, p.Container) {
			t.Fatalf("container id %q not in %q", p.Container, path)
		}
	})
}
