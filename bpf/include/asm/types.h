/* Shim: the BPF target has no arch directory; BPF is a 64-bit little-endian target here. */
#include <asm-generic/types.h>
