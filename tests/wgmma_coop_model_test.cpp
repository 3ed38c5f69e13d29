// A host model of the persistent cooperative schedule's protocol (coop_schedule in
// kernels/conv/wgmma_conv.cu, the _coop_im2col tiles), run over random interleavings, as
// tests/wgmma_pp_model_test.cpp models the ping-pong one (an mbarrier as tests/mbarrier_model.h:
// a parity wait cannot tell the phase it waits for from one two phases earlier):
//   - one producer thread walks the block's slices r = 0, 1, ... (unit after unit) through S
//     stages: waits for empty[r % S] (from r >= S on), issues the slice's TMA copies, whose
//     bytes land at a random later time (in order) and complete full[r % S]'s phase;
//   - two consumer warpgroups, one agent each (the wgmma instructions and waits are
//     warpgroup-collective; the kernel's 4 arrivals per warpgroup are one here), both compute
//     every unit: per slice they wait for full[r % S], issue their MMAs (which complete at
//     random times, in order), wait until at most one slice's MMAs are pending and release the
//     previous slice (one arrival each on empty[], whose phase so needs both); after the unit
//     they wait for all their MMAs (a weight-gradient unit may have no slices: skipped);
//   - the epilogue: mode 0 stores from registers (the plain store) and releases the last slice;
//     mode 1 is kHold (the fused epilogues): no release of the last but one slice in the loop,
//     a common barrier of both consumers (bar.sync 1, 256: both must arrive at it), then each
//     releases the other's held stage and runs its epilogue in its own (consumer g in slice
//     k_tiles - 1 - g), releasing it after; with one slice per unit both take turns in it,
//     consumer 1 after a second common barrier that consumer 0 reaches after its epilogue.
//     Modes 2 and 3 are negative controls: mode 1 without the common barriers, and mode 1
//     releasing the held stage before the epilogue instead of after.
// Asserted: every run ends (no deadlock); a consumer reads a stage only when that very slice has
// landed there and no epilogue writes it; no copy is issued into, or lands in, a stage whose MMAs
// on an older slice are pending or in which an epilogue runs; an epilogue starts only in a stage
// no MMAs read and no other epilogue uses. The negative controls do fail these checks, so the
// model sees what the barriers and the holding prevent; so does an empty barrier that completes
// on one consumer's release (as if it counted only one warpgroup's warps).
#include <algorithm>
#include <catch2/catch.hpp>
#include <random>
#include <string>
#include <vector>

#include "tests/mbarrier_model.h"

namespace {

using model::Barrier;

// tiles[i]: the k_tiles of the block's unit i (>= 1 with held stages: a forward unit always has
// a slice); empty_count: the consumers whose release completes an empty phase (2 in the kernel).
// "ok", "deadlock" or a description of the race.
std::string run_coop(int S, const std::vector<int>& tiles, int mode, unsigned seed, int empty_count = 2) {
  std::mt19937 rng(seed);
  int total = 0;
  std::vector<int> first(tiles.size());
  for (size_t i = 0; i < tiles.size(); i++) first[i] = total, total += tiles[i];
  std::vector<Barrier> full(S, Barrier{1}), empty(S, Barrier{empty_count});
  std::vector<int> landed(S, -1);
  std::vector<std::vector<int>> reading(S);  // stage -> slices with MMAs pending (either consumer)
  std::vector<int> held(S, -1);              // stage -> the consumer whose epilogue writes it
  int issued = 0;
  std::vector<int> in_flight;  // slices issued, not yet landed (in order)
  // Consumer state: unit i, slice kt of it; pc: 1 full wait, 2 wait for <= 1 pending, 3 wait for
  // none, 4 in the common barrier after the MMAs, 5 in the turn barrier before the epilogue,
  // 6 epilogue start, 7 epilogue end, 8 in the turn barrier after it, 9 done.
  struct Cons {
    int i = 0, kt = 0, pc = 1, syncs = 0, mine = -1;
    std::vector<int> pending;
  };
  Cons cons[2];
  const bool hold = mode != 0, barriers = mode != 2, early = mode == 3;
  // bar.sync: the k-th barrier of a consumer passes once the other has arrived at its k-th.
  auto arrive_sync = [&](int g) { cons[g].syncs++; };
  auto sync_passed = [&](int g) { return cons[g ^ 1].syncs >= cons[g].syncs; };
  auto next_unit = [&](Cons& c) {
    c.i++, c.kt = 0, c.mine = -1;
    c.pc = c.i < (int)tiles.size() ? 1 : 9;
  };
  for (Cons& c : cons)
    if (tiles.empty()) c.pc = 9;
  for (int step = 0; step < 4000000; step++) {
    // (kind, index): 0 producer issues, 1 a copy lands, 2 consumer step, 3 MMAs complete
    std::vector<std::pair<int, int>> acts;
    if (issued < total) acts.push_back({0, 0});
    if (!in_flight.empty()) acts.push_back({1, 0});
    for (int g = 0; g < 2; g++) {
      if (cons[g].pc != 9) acts.push_back({2, g});
      if (!cons[g].pending.empty()) acts.push_back({3, g});
    }
    std::shuffle(acts.begin(), acts.end(), rng);
    bool moved = false;
    for (auto [kind, x] : acts) {
      if (kind == 0) {
        const int st = issued % S;
        if (issued >= S && !empty[st].passed((issued / S - 1) & 1)) continue;
        if (!reading[st].empty()) return "slice " + std::to_string(issued) + " issued into a stage being read";
        if (held[st] >= 0)
          return "slice " + std::to_string(issued) + " issued into the stage of consumer " + std::to_string(held[st]) +
                 "'s epilogue";
        in_flight.push_back(issued++);
        moved = true;
      } else if (kind == 1) {
        const int sl = in_flight.front(), st = sl % S;
        for (int r : reading[st])
          if (r != sl)
            return "copy of slice " + std::to_string(sl) + " lands while slice " + std::to_string(r) + " is read";
        if (held[st] >= 0)
          return "copy of slice " + std::to_string(sl) + " lands in the stage of consumer " + std::to_string(held[st]) +
                 "'s epilogue";
        in_flight.erase(in_flight.begin());
        landed[st] = sl;
        full[st].arrive();
        moved = true;
      } else if (kind == 3) {
        Cons& c = cons[x];
        const int sl = c.pending.front();
        c.pending.erase(c.pending.begin());
        auto& rd = reading[sl % S];
        rd.erase(std::find(rd.begin(), rd.end(), sl));
        moved = true;
      } else {
        const int g = x;
        Cons& c = cons[g];
        const int n = tiles[c.i], r = first[c.i] + c.kt, last = first[c.i] + n - 1;
        const bool two = n >= 2;
        if (c.pc == 1 && n == 0) {
          if (hold) return "a unit without slices has no stage to hold";
          next_unit(c);  // no MMAs, nothing to release; the register store of zeros
        } else if (c.pc == 1) {
          const int st = r % S;
          if (!full[st].passed((r / S) & 1)) continue;
          if (landed[st] != r) return "slice " + std::to_string(r) + " read before it landed";
          if (held[st] >= 0)
            return "slice " + std::to_string(r) + " read in the stage of consumer " + std::to_string(held[st]) +
                   "'s epilogue";
          c.pending.push_back(r);
          reading[st].push_back(r);
          c.pc = 2;
        } else if (c.pc == 2) {
          if (c.pending.size() > 1) continue;
          if (c.kt > 0 && !(hold && c.kt == n - 1)) empty[(r - 1) % S].arrive();
          c.pc = ++c.kt < n ? 1 : 3;
        } else if (c.pc == 3) {
          if (!c.pending.empty()) continue;
          if (!hold) {
            empty[last % S].arrive();
            next_unit(c);
          } else {
            c.mine = (two ? last - g : last) % S;
            if (barriers) arrive_sync(g);
            c.pc = 4;
          }
        } else if (c.pc == 4) {
          if (barriers && !sync_passed(g)) continue;
          if (two) empty[(last - 1 + g) % S].arrive();  // the other consumer's held stage
          if (early) empty[c.mine].arrive();
          if (!two && g == 1 && barriers) arrive_sync(g);
          c.pc = !two && g == 1 ? 5 : 6;
        } else if (c.pc == 5) {
          if (barriers && !sync_passed(g)) continue;
          c.pc = 6;
        } else if (c.pc == 6) {
          if (!reading[c.mine].empty())
            return "consumer " + std::to_string(g) + "'s epilogue writes a stage whose MMAs are pending";
          if (held[c.mine] >= 0)
            return "consumer " + std::to_string(g) + "'s epilogue writes the stage of consumer " +
                   std::to_string(held[c.mine]) + "'s epilogue";
          held[c.mine] = g;
          c.pc = 7;
        } else if (c.pc == 7) {
          held[c.mine] = -1;
          if (!early) empty[c.mine].arrive();
          if (!two && g == 0) {
            if (barriers) arrive_sync(g);
            c.pc = 8;
          } else {
            next_unit(c);
          }
        } else if (c.pc == 8) {
          if (barriers && !sync_passed(g)) continue;
          next_unit(c);
        }
        moved = true;
      }
      if (moved) break;
    }
    if (!moved) {
      if (issued < total || !in_flight.empty() || cons[0].pc != 9 || cons[1].pc != 9) return "deadlock";
      return "ok";
    }
  }
  return "no end";
}

// Of 300 seeds of `tiles` through S stages in `mode`, how many end in a race whose description
// mentions `what`.
int seeds_reporting(int S, const std::vector<int>& tiles, int mode, const std::string& what) {
  int found = 0;
  for (unsigned seed = 0; seed < 300; seed++)
    if (run_coop(S, tiles, mode, seed).find(what) != std::string::npos) found++;
  return found;
}

}  // namespace

// Blocks of units of the forward's slice counts (9: layer1, 18, 36, 72: layer3_res; 1: a 1x1
// conv on 64 channels, whose consumers take turns in the one stage; 2 and 3: the fewest for two
// held stages), through 2 to 4 stages (the cooperative tiles have 4).
TEST_CASE("wgmma cooperative schedule, register store and held stages: no deadlock, no race (host model)",
          "[wgmma][pp][coop]") {
  const std::vector<std::vector<int>> blocks = {{9}, {9, 9, 9},          {18, 18, 18, 18}, {36, 36},    {72, 72},
                                                {1}, {1, 1, 1, 1, 1, 1}, {2, 2, 2, 2, 2},  {3, 3, 3, 3}};
  for (int mode : {0, 1})
    for (int S : {2, 3, 4, 5})
      for (const auto& tiles : blocks)
        for (unsigned seed = 0; seed < 20; seed++) {
          INFO("mode " << mode << " stages " << S << " units " << tiles.size() << " k_tiles " << tiles[0] << " seed "
                       << seed);
          CHECK(run_coop(S, tiles, mode, seed) == "ok");
        }
  // The weight gradient's units (split-K slabs, register store): uneven, some empty.
  for (int S : {2, 3, 4, 5})
    for (const std::vector<int>& units : {std::vector<int>{3, 0, 7, 2, 5}, std::vector<int>{0, 4, 0, 0, 1}})
      for (unsigned seed = 0; seed < 40; seed++) {
        INFO("weight gradient units, stages " << S << " seed " << seed);
        CHECK(run_coop(S, units, 0, seed) == "ok");
      }
}

// Without the common barriers a consumer's epilogue writes a stage the other still reads (two
// held stages) or the other's epilogue uses (one); releasing the held stage before the epilogue
// lets the next copies land in it.
TEST_CASE("wgmma cooperative model: an empty barrier of one consumer's release races", "[wgmma][pp][coop]") {
  int races = 0;
  for (unsigned seed = 0; seed < 200; seed++) {
    const std::string r = run_coop(4, {9, 9, 9}, 0, seed, 1);
    if (r != "ok" && r != "deadlock") races++;
  }
  CHECK(races > 0);
}

TEST_CASE("wgmma cooperative model: held stages without the barrier, or released early, race", "[wgmma][pp][coop]") {
  CHECK(seeds_reporting(4, {3, 3, 3, 3}, 2, "epilogue") > 0);
  CHECK(seeds_reporting(4, {1, 1, 1, 1, 1, 1}, 2, "epilogue") > 0);
  CHECK(seeds_reporting(2, {2, 2, 2, 2, 2}, 3, "epilogue") > 0);
  CHECK(seeds_reporting(4, {1, 1, 1, 1, 1, 1}, 3, "epilogue") > 0);
}
