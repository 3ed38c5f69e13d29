// The mbarrier as the host models of the wgmma pipelines' protocols use it
// (tests/wgmma_pp_model_test.cpp, tests/wgmma_halo_model_test.cpp, the warp-specialized pipeline's
// model in tests/wgmma_conv_gpu_test.cu): a phase completes at `count` arrivals, and a parity
// wait passes once the current phase's parity differs from the one asked for (PTX
// mbarrier.try_wait.parity), so it cannot tell the phase it waits for from one two phases earlier.
#pragma once

namespace model {

struct Barrier {
  int count, arrived = 0, phase = 0;
  void arrive() {
    if (++arrived == count) arrived = 0, phase++;
  }
  bool passed(int parity) const { return (phase & 1) != parity; }
};

}  // namespace model
