package intercept

// The client-leg redirect (bpf/sockmap.c) is an object of its own so that a
// kernel without sockhash or sk_msg still loads interception (see gen.go).
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-16 -target bpfel -type sock_key sockmap ../../bpf/sockmap.c -- -O2 -Wall -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
