/* Shim, see types.h: only the little-endian object (bpfel) is built. */
#include <linux/byteorder/little_endian.h>
