// conv_bench's command line, which it checks before it looks for a GPU (so this runs on every
// machine): --help lists --layers; an unknown layer name exits 1 naming it and the known ones;
// --layers without a value is an incomplete argument.
#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace fs = std::filesystem;

namespace {

struct Run {
  int code = -1;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Run run_conv_bench(const std::string& args) {
  const fs::path dir = fs::temp_directory_path() / ("cs_conv_bench_cli_" + std::to_string((long)getpid()));
  fs::create_directories(dir);
  const std::string cmd = "'" + std::string(CS_BINARY_DIR) + "/conv_bench' " + args + " >'" +
                          (dir / "out").string() + "' 2>'" + (dir / "err").string() + "'";
  const int status = std::system(cmd.c_str());
  Run r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(dir / "out");
  r.err = slurp(dir / "err");
  fs::remove_all(dir);
  return r;
}

}  // namespace

TEST_CASE("conv_bench: --layers and --configs in --help, unknown or missing names rejected", "[tools]") {
  if (!fs::exists(fs::path(CS_BINARY_DIR) / "conv_bench")) {
    WARN("conv_bench not built (no CUDA toolkit): nothing to check");
    return;
  }
  const Run help = run_conv_bench("--help");
  CHECK(help.code == 0);
  CHECK(help.out.find("--layers") != std::string::npos);
  CHECK(help.out.find("--configs") != std::string::npos);

  const Run unknown = run_conv_bench("--layers layer1,layer9");
  CHECK(unknown.code == 1);
  CHECK(unknown.err.find("unknown layer 'layer9'") != std::string::npos);
  CHECK(unknown.err.find("layer3_res") != std::string::npos);  // the known names

  const Run missing = run_conv_bench("--layers");
  CHECK(missing.code == 1);
  CHECK(missing.err.find("incomplete argument '--layers'") != std::string::npos);

  const Run unknown_config = run_conv_bench("--configs wgmma_128x128x64_s3,wgmma_9x9");
  CHECK(unknown_config.code == 1);
  CHECK(unknown_config.err.find("unknown config 'wgmma_9x9'") != std::string::npos);
  CHECK(unknown_config.err.find("wgmma_128x128x64_s4_pp_im2col") != std::string::npos);  // the known names
  CHECK(unknown_config.err.find("64x64x32_s4") != std::string::npos);

  const Run missing_config = run_conv_bench("--configs");
  CHECK(missing_config.code == 1);
  CHECK(missing_config.err.find("incomplete argument '--configs'") != std::string::npos);
}
