// Package bpf holds svcproxy's BPF programs (svc.c and include/) and the Go bindings bpf2go
// generates from them. The generated svc_bpfel.go and svc_bpfel.o are committed, so building
// needs no clang; regenerate with `go generate ./bpf/...` (clang, libbpf-dev and
// linux-libc-dev required) after changing any C file.
//
// proxy/ebpf loads the collection (LoadSvc), sizes and pins its maps, and attaches the programs.
package bpf

//go:generate go tool bpf2go -go-package bpf -target bpfel -output-stem svc -cflags "-O2 -g -Wall -Werror -I./include" -type svc_key -type svc_value -type backend_value -type revnat_value -type sock_revnat_key -type sock_revnat_value -type affinity_key -type affinity_value -type ct_key -type ct_value -type destroy_key -type src_range_key -type cidr_key -type lb_req Svc svc.c
