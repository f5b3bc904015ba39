#!/bin/sh
# Build and run the verification driver of our Metal kernels (see metal/kernels/README.md).
# Needs `make -j2 all` first (the three static libraries).  Arguments go to the driver:
#   --quick            fewer/smaller cases        --only SUBSTRING   only checks whose name contains it
#   --workers N        emulator worker threads (default 2)           -v   print passing cases too
set -e
cd "$(dirname "$0")/../../.."
${CC:-cc} -std=c11 -D_GNU_SOURCE -O2 -g -ffp-contract=off -fno-fast-math -Wall -Wextra -Wno-unused-parameter \
    -Iinclude -o build/metal-kernels-verify metal/kernels/verify/verify.c \
    build/libtrellis_engine.a build/libtrellis_metal_emu.a build/libtrellis_ref.a \
    $(pkg-config --libs jansson libcrypto gsl libpcre2-8 libutf8proc) -lm -lpthread -ldl
exec build/metal-kernels-verify "$@"
