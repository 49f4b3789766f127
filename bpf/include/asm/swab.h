/* Shim, see types.h: the generic byte-swap helpers of linux/swab.h are enough. */
