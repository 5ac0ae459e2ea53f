# llhttp, Node.js's HTTP/1.1 parser, as Debian ships it for C programs: the
# generated sources in the node-llhttp package (scripts/deps.sh installs it).
# Built as a static library `llhttp` in its strict mode, with its own warnings
# left to its authors. Included by the top-level and the fuzz CMakeLists.txt.
find_path(LLHTTP_INCLUDE_DIR llhttp.h PATHS /usr/share/include/llhttp NO_DEFAULT_PATH)
find_path(LLHTTP_SOURCE_DIR llhttp.c PATHS /usr/share/llhttp NO_DEFAULT_PATH)
if(NOT LLHTTP_INCLUDE_DIR OR NOT LLHTTP_SOURCE_DIR)
  message(FATAL_ERROR "llhttp not found: run scripts/deps.sh (Debian package node-llhttp)")
endif()
add_library(llhttp STATIC ${LLHTTP_SOURCE_DIR}/llhttp.c ${LLHTTP_SOURCE_DIR}/api.c
            ${LLHTTP_SOURCE_DIR}/http.c)
target_include_directories(llhttp SYSTEM PUBLIC ${LLHTTP_INCLUDE_DIR})
target_compile_definitions(llhttp PUBLIC LLHTTP_STRICT_MODE=1)
target_compile_options(llhttp PRIVATE -w)
