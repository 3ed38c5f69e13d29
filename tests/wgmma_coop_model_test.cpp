// A host model of the persistent cooperative schedule's protocol (coop_schedule in
// kernels/conv/wgmma_conv.cu, the _coop_im2col tile), run over random interleavings as the
// ping-pong schedule's model (tests/wgmma_pp_model_test.cpp):
//   - one producer thread walks the block's slices r = 0, 1, ... (unit after unit) through S
//     stages: from r >= S on it waits for empty[r % S]'s phase r / S - 1, then issues the TMA
//     copy, whose expect_tx arrival completes full[r % S]'s phase when the bytes land (at a
//     random time; copies land in order);
//   - 2 consumer warpgroups, one agent each (the wgmma instructions and waits are
//     warpgroup-collective; the kernel's 4 arrivals per warpgroup are one here), both reading
//     every slice: wait for full[r % S]'s phase r / S, issue the MMAs (which complete at random
//     times, in order), wait until at most one slice's MMAs are pending and release the
//     previous slice of the unit on empty[]; after the unit, wait for all MMAs, release its last
//     slice and store the tile from registers (a step of its own, nothing shared);
//   - an mbarrier as tests/mbarrier_model.h: a parity wait cannot tell the phase it waits for
//     from one two phases earlier.
// Asserted: every run ends (no deadlock); a consumer reads a stage only when the copy of that
// very slice has landed there; no copy is issued into, or lands in, a stage that a consumer's
// MMAs on an older slice still read. With an empty barrier that completes on one consumer's
// release (as if it counted only one warpgroup's warps) the model finds copies overwriting a
// stage the other consumer still reads: it sees what the count of both prevents.
#include <algorithm>
#include <catch2/catch.hpp>
#include <random>
#include <string>
#include <vector>

#include "tests/mbarrier_model.h"

namespace {

using model::Barrier;

// units[i]: the k_tiles of the block's unit i; empty_count: consumers whose release completes an
// empty phase (2 in the kernel). "ok", "deadlock" or a description of the race.
std::string run_coop(int S, const std::vector<int>& units, unsigned seed, int empty_count = 2) {
  std::mt19937 rng(seed);
  std::vector<int> last;  // the block's number of each unit's last slice
  int total = 0;
  for (int k : units) {
    total += k;
    if (k > 0) last.push_back(total - 1);
  }
  std::vector<Barrier> full(S, Barrier{1}), empty(S, Barrier{empty_count});
  std::vector<int> landed(S, -1);            // stage -> the slice whose copy landed there
  std::vector<std::vector<int>> reading(S);  // stage -> slices with MMAs pending on it
  std::vector<int> in_flight;                // copies issued, not landed, in order
  int prod_r = 0;
  struct Consumer {
    int r = 0, pc = 0;  // pc: 0 wait full, 1 wait MMAs (<= 1 pending), 2 unit end, 3 epilogue, 4 done
    std::vector<int> pending;
  };
  Consumer cons[2];
  auto is_last = [&](int r) { return std::find(last.begin(), last.end(), r) != last.end(); };
  auto first_of_unit = [&](int r) { return r == 0 || is_last(r - 1); };
  for (int step = 0; step < 1000000; step++) {
    std::vector<std::pair<int, int>> acts;  // (kind, index): 0 producer, 1 copy lands, 2 consumer, 3 MMAs complete
    if (prod_r < total) acts.push_back({0, 0});
    if (!in_flight.empty()) acts.push_back({1, 0});
    for (int c = 0; c < 2; c++) {
      if (cons[c].pc != 4) acts.push_back({2, c});
      if (!cons[c].pending.empty()) acts.push_back({3, c});
    }
    if (acts.empty()) return "ok";
    std::shuffle(acts.begin(), acts.end(), rng);
    bool moved = false;
    for (auto [kind, i] : acts) {
      if (kind == 0) {
        const int st = prod_r % S;
        if (prod_r >= S && !empty[st].passed((prod_r / S - 1) & 1)) continue;
        for (int r : reading[st])
          if (r != prod_r)
            return "slice " + std::to_string(prod_r) + " issued into a stage slice " + std::to_string(r) +
                   " is read from";
        landed[st] = -1;
        in_flight.push_back(prod_r++);
        moved = true;
      } else if (kind == 1) {
        const int sl = in_flight.front();
        in_flight.erase(in_flight.begin());
        for (int r : reading[sl % S])
          if (r != sl)
            return "copy of slice " + std::to_string(sl) + " lands while slice " + std::to_string(r) + " is read";
        landed[sl % S] = sl;
        full[sl % S].arrive();
        moved = true;
      } else if (kind == 3) {
        Consumer& c = cons[i];
        const int sl = c.pending.front();
        c.pending.erase(c.pending.begin());
        auto& rd = reading[sl % S];
        rd.erase(std::find(rd.begin(), rd.end(), sl));
        moved = true;
      } else {
        Consumer& c = cons[i];
        if (c.pc == 0) {
          if (c.r >= total) {
            c.pc = 4, moved = true;
          } else if (full[c.r % S].passed((c.r / S) & 1)) {
            if (landed[c.r % S] != c.r) return "slice " + std::to_string(c.r) + " read before it landed";
            c.pending.push_back(c.r);
            reading[c.r % S].push_back(c.r);
            c.pc = 1, moved = true;
          }
        } else if (c.pc == 1 && c.pending.size() <= 1) {  // wgmma_wait<1>, release the previous slice
          if (!first_of_unit(c.r)) empty[(c.r - 1) % S].arrive();
          c.pc = is_last(c.r) ? 2 : 0;
          if (c.pc == 0) c.r++;
          moved = true;
        } else if (c.pc == 2 && c.pending.empty()) {  // wgmma_wait<0>, release the unit's last slice
          empty[c.r % S].arrive();
          c.r++, c.pc = 3, moved = true;
        } else if (c.pc == 3) {  // the register epilogue ends (when, the shuffled order decides)
          c.pc = 0, moved = true;
        }
      }
      if (moved) break;
    }
    if (!moved) return "deadlock";
  }
  return "deadlock";
}

}  // namespace

TEST_CASE("wgmma cooperative schedule protocol: no deadlock, no stage race (host model)", "[wgmma][pp]") {
  const std::vector<std::vector<int>> unit_lists = {{9, 9, 9, 9}, {1, 1, 1}, {18}, {3, 0, 7, 2, 5}, {72, 72}};
  for (int S : {2, 3, 4, 5})
    for (const auto& units : unit_lists)
      for (unsigned seed = 0; seed < 40; seed++) {
        INFO("S " << S << " units " << units.size() << " seed " << seed);
        REQUIRE(run_coop(S, units, seed) == "ok");
      }
}

TEST_CASE("wgmma cooperative model: an empty barrier of one consumer's release races", "[wgmma][pp]") {
  int races = 0;
  for (unsigned seed = 0; seed < 200; seed++) {
    const std::string r = run_coop(4, {9, 9, 9}, seed, 1);
    if (r != "ok" && r != "deadlock") races++;
  }
  CHECK(races > 0);
}
