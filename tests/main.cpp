// Catch2 v2 entry point shared by the CPU and GPU test executables.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
