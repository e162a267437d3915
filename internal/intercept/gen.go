package intercept

// The generated airlock_bpfel.go and airlock_bpfel.o are committed so that a
// plain `go build` needs no clang; rerun `go generate ./internal/intercept/`
// after editing bpf/airlock.c. The multiarch include paths are where Debian
// keeps <asm/types.h>, which <linux/bpf.h> needs.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-16 -target bpfel -type config -type target_key -type record -type client_key -type peer -type exec_event airlock ../../bpf/airlock.c -- -O2 -Wall -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
