/*
 * host_source.h — source handling of the macOS Metal runner (metal/host/, METAL.md §7), in portable C11 so that it
 * is also compiled and unit-tested on Linux (tests/check_metal_conform.c); the Objective-C runner itself
 * (metal_host.m) is built only on Darwin.
 *
 *   trmh_expand_includes  MTLDevice's runtime compiler (newLibraryWithSource:) does not know the directory of a
 *                         source, so quoted includes (#include "x.h", relative to the including file) are inlined
 *                         here, each file once per translation unit (the meaning of #pragma once; include guards
 *                         make a second inclusion empty anyway), with #line markers so the compiler's messages point
 *                         into the original files.  Angle-bracket includes (<metal_stdlib>) are left to the compiler.
 *   trmh_builtin_width    Metal's reflection lists bindable arguments only, not builtins; the runner's launch
 *                         geometry for one-threadgroup-per-tile kernels depends on whether the kernel reads
 *                         threadgroup_position_in_grid as a scalar or a vector, so the declared type of a builtin
 *                         is read from the kernel's parameter list in the (expanded) source.
 */
#ifndef TRMH_HOST_SOURCE_H
#define TRMH_HOST_SOURCE_H

#include <stddef.h>

/* The source of path with its quoted includes inlined.  Returns 0 and a malloc'ed NUL-terminated text in *out, or -1
 * with the reason in why (an include that cannot be read, nesting deeper than 32, out of memory). */
int trmh_expand_includes(const char *path, char **out, char *why, size_t cap);

/* Vector width (1 for a scalar) of the parameter of kernel `kernel` carrying attribute [[builtin]], read from the
 * first `kernel void kernel(` or `[[kernel]] void kernel(` definition in src; 0 when the kernel or the builtin is not
 * found (template kernels instantiated under a [[host_name]] are not resolved: 0). */
int trmh_builtin_width(const char *src, const char *kernel, const char *builtin);

#endif
