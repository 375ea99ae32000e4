# Included right after llama.cpp's project() call (CMAKE_PROJECT_llama.cpp_INCLUDE, set by the
# Makefile), before its options are read: llama-cpp-python forces the `common` library on, but
# Keyhouse loads only libllama and ggml (its JSON-schema grammars are built in Python), so the
# 52 build steps of `common` are skipped. The multimodal library is skipped with LLAVA_BUILD=OFF.
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp common library: Keyhouse does not load it" FORCE)
