// A host model of the persistent ping-pong schedule's protocol (pp_schedule in
// kernels/conv/wgmma_conv.cu), run over random interleavings, as the warp-specialized
// pipeline's model in tests/wgmma_conv_gpu_test.cu:
//   - P producer threads (the cp.async warpgroup; or, P = 1, the im2col tile's TMA thread) walk
//     the block's slices r = 0, 1, ... (tile after tile) through S stages: wait for
//     empty[r % S] (from r >= S on), issue the copy, and its arrival on full[r % S] fires when
//     the copy lands (cp.async.mbarrier.arrive.noinc; for TMA, the expect_tx arrival's phase
//     completes when the bytes have); a thread's copies land at random times, in order;
//   - 2 consumer warpgroups, one agent each (the wgmma instructions are warpgroup-collective):
//     the block's tile i is consumer i % 2's; before it (i > 0) the consumer waits for the
//     order barrier's phase (i - 1) / 2, then for each slice waits for full[r % S], issues its
//     MMAs (which complete at random times, in order), waits until at most one slice's MMAs
//     are pending and releases the previous slice of the tile on empty[]; after the tile it
//     arrives on the other consumer's order barrier, waits for all its MMAs and releases the
//     last slice;
//   - an mbarrier completes a phase at `count` arrivals, and a parity wait passes once the
//     current phase's parity differs from the one asked for: it cannot tell the phase it waits
//     for from one two phases earlier, which is why the order barrier exists.
//   - one epilogue buffer (the 5-stage tile, kOneEpilogue): after its tile's MMAs a consumer
//     waits for the epi barrier's phase i - 1 (tile i - 1's epilogue done), then runs its
//     epilogue in the shared buffer (for a random time) and arrives on epi (the fourth test;
//     without that wait the model finds two epilogues in the buffer at once, the fifth);
//   - the epilogue in the tile's last stage (the 7- and 9-stage tiles' fused epilogues, which
//     have no epilogue buffer: pp_schedule's kHold): a consumer keeps that stage through its
//     epilogue and releases it after (the sixth test; released before, as the plain store
//     does, the model finds copies landing in the stage the epilogue writes, the seventh);
//   - clusters (the _c2 tile): B such blocks walk the same tiles; each producer's copy of a slice
//     lands in every block (multicast), and a consumer releases a stage on every block's empty
//     barrier, whose phase so needs all blocks' releases (the third test; with each consumer
//     releasing only its own block, the model finds copies landing in stages still read).
// Asserted: every run ends (no deadlock); a consumer reads a stage only when every producer's
// copy of that very slice has landed there; no copy is issued into, or lands in, a stage whose
// MMAs on an older slice are pending. Without the order barrier the same model reads stages
// too early (the second test), so it does see what the barrier prevents.
#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "tests/mbarrier_model.h"

namespace {

using model::Barrier;

// tiles[i]: the k_tiles of the block's tile i. "ok", "deadlock" or a description of the race.
// B blocks form a cluster (B = 1: none): each walks the same tiles; every producer's copy of a
// slice lands in every block's stage (TMA multicast, each destination at its own random time)
// and arrives on that block's full barrier, so a block's full[s] counts P * B arrivals; a
// consumer releases a stage on the empty barrier of every block (B arrivals per phase), and a
// producer refills a stage once its own block's empty barrier says all have released it.
// epi: 0 each consumer has its own epilogue buffer (not modelled); 1 one shared buffer behind
// the epi barrier; 2 one shared buffer without the wait (to show what the barrier prevents);
// 3 the epilogue in the tile's last stage, released after it; 4 the same, released before it
// (to show what holding it prevents).
std::string run_pp(int S, const std::vector<int>& tiles, int P, bool ordered, unsigned seed, int B = 1, int epi = 0) {
  std::mt19937 rng(seed);
  int total = 0;
  std::vector<int> first(tiles.size());  // the block's number of tile i's first slice
  for (size_t i = 0; i < tiles.size(); i++) first[i] = total, total += tiles[i];
  struct Block {
    std::vector<Barrier> full, empty, order;
    std::vector<std::vector<int>> landed;   // stage -> (producer block * P + producer) -> slice
    std::vector<std::vector<int>> reading;  // stage -> slices with MMAs pending
    Barrier epi{1};                         // one arrival per tile (the model's warpgroup agent)
    int in_epilogue = -1;                   // the tile whose epilogue uses the shared buffer
    std::vector<int> held;                  // stage -> the tile whose epilogue uses it, or -1
  };
  std::vector<Block> blk(B);
  for (Block& k : blk) {
    k.full.assign(S, Barrier{P * B});
    k.empty.assign(S, Barrier{B});
    k.order.assign(2, Barrier{1});
    k.landed.assign(S, std::vector<int>(P * B, -1));
    k.reading.assign(S, std::vector<int>());
    k.held.assign(S, -1);
  }
  struct Prod {
    int r = 0;
    std::vector<std::pair<int, int>> in_flight;  // (slice, destination block), issued, not yet landed
  };
  std::vector<Prod> prod(B * P);  // producer q of block q / P
  // Consumer (block c / 2, warpgroup c % 2): tile index i (of the block's), slice kt in it, pc:
  // 0 order wait, 1 full wait, 2 wait for <= 1 pending, 3 wait for 0 pending, 4 done, 5 epi
  // wait (one epilogue buffer), 6 in the epilogue.
  struct Cons {
    int i = 0, kt = 0, pc = 0;
    std::vector<int> pending;
  };
  std::vector<Cons> cons(2 * B);
  for (int c = 0; c < 2 * B; c++) {
    cons[c].i = c % 2;
    if (cons[c].i >= (int)tiles.size()) cons[c].pc = 4;
  }
  auto release = [&](int st) {
    for (Block& k : blk) k.empty[st].arrive();
  };
  for (int step = 0; step < 4000000; step++) {
    // (kind, index): 0 producer step, 1 a copy lands, 2 consumer step, 3 MMAs complete
    std::vector<std::pair<int, int>> acts;
    for (int q = 0; q < B * P; q++) {
      if (prod[q].r < total) acts.push_back({0, q});
      if (!prod[q].in_flight.empty()) acts.push_back({1, q});
    }
    for (int c = 0; c < 2 * B; c++) {
      if (cons[c].pc != 4) acts.push_back({2, c});
      if (!cons[c].pending.empty()) acts.push_back({3, c});
    }
    std::shuffle(acts.begin(), acts.end(), rng);
    bool moved = false;
    for (auto [kind, x] : acts) {
      if (kind == 0) {
        Prod& p = prod[x];
        const int st = p.r % S;
        if (p.r >= S && !blk[x / P].empty[st].passed((p.r / S - 1) & 1)) continue;
        for (int d = 0; d < B; d++) {
          if (!blk[d].reading[st].empty()) return "slice " + std::to_string(p.r) + " issued into a stage being read";
          if (blk[d].held[st] >= 0)
            return "slice " + std::to_string(p.r) + " issued into the stage of tile " +
                   std::to_string(blk[d].held[st]) + "'s epilogue";
        }
        for (int d = 0; d < B; d++) p.in_flight.push_back({p.r, d});
        p.r++;
        moved = true;
      } else if (kind == 1) {
        Prod& p = prod[x];
        // The copies to different blocks land in any order; to one block, in order.
        std::vector<size_t> heads;
        for (size_t j = 0; j < p.in_flight.size(); j++) {
          bool first_for_dest = true;
          for (size_t k = 0; k < j; k++)
            if (p.in_flight[k].second == p.in_flight[j].second) first_for_dest = false;
          if (first_for_dest) heads.push_back(j);
        }
        const size_t j = heads[rng() % heads.size()];
        const auto [sl, d] = p.in_flight[j];
        const int st = sl % S;
        for (int r : blk[d].reading[st])
          if (r != sl) return "copy of slice " + std::to_string(sl) + " lands while slice " + std::to_string(r) + " is read";
        if (blk[d].held[st] >= 0)
          return "copy of slice " + std::to_string(sl) + " lands in the stage of tile " +
                 std::to_string(blk[d].held[st]) + "'s epilogue";
        p.in_flight.erase(p.in_flight.begin() + (long)j);
        blk[d].landed[st][x] = sl;
        blk[d].full[st].arrive();  // the copy's arrival (or its bytes), once it has landed
        moved = true;
      } else if (kind == 3) {
        Cons& c = cons[x];
        const int sl = c.pending.front();
        c.pending.erase(c.pending.begin());
        auto& rd = blk[x / 2].reading[sl % S];
        rd.erase(std::find(rd.begin(), rd.end(), sl));
        moved = true;
      } else {
        Cons& c = cons[x];
        Block& k = blk[x / 2];
        const int g = x % 2, n = tiles[c.i], r = first[c.i] + c.kt;
        if (c.pc == 0) {
          if (ordered && c.i > 0 && !k.order[g].passed(((c.i - 1) >> 1) & 1)) continue;
          c.pc = n > 0 ? 1 : 3;
          if (n == 0) k.order[g ^ 1].arrive();
          moved = true;
        } else if (c.pc == 1) {
          const int st = r % S;
          if (!k.full[st].passed((r / S) & 1)) continue;
          for (int q = 0; q < B * P; q++)
            if (k.landed[st][q] != r) return "slice " + std::to_string(r) + " read before it landed";
          c.pending.push_back(r);
          k.reading[st].push_back(r);
          c.pc = 2;
          moved = true;
        } else if (c.pc == 2) {
          if (c.pending.size() > 1) continue;
          if (c.kt > 0) release((r - 1) % S);
          c.kt++;
          if (c.kt < n) {
            c.pc = 1;
          } else {
            k.order[g ^ 1].arrive();
            c.pc = 3;
          }
          moved = true;
        } else if (c.pc == 3) {
          if (!c.pending.empty()) continue;
          if (n > 0 && epi != 3) release((first[c.i] + n - 1) % S);
          if (epi) {
            c.pc = 5;
          } else {
            c.i += 2, c.kt = 0;
            c.pc = c.i < (int)tiles.size() ? 0 : 4;
          }
          moved = true;
        } else if (c.pc == 5 && epi >= 3) {
          if (n > 0) k.held[(first[c.i] + n - 1) % S] = c.i;  // the epilogue writes its last stage
          c.pc = 6;
          moved = true;
        } else if (c.pc == 6 && epi >= 3) {
          if (n > 0) {
            k.held[(first[c.i] + n - 1) % S] = -1;
            if (epi == 3) release((first[c.i] + n - 1) % S);
          }
          c.i += 2, c.kt = 0;
          c.pc = c.i < (int)tiles.size() ? 0 : 4;
          moved = true;
        } else if (c.pc == 5) {
          if (epi == 1 && c.i > 0 && !k.epi.passed((c.i - 1) & 1)) continue;
          if (k.in_epilogue >= 0)
            return "tile " + std::to_string(c.i) + "'s epilogue writes the buffer tile " +
                   std::to_string(k.in_epilogue) + "'s still reads";
          k.in_epilogue = c.i;
          c.pc = 6;
          moved = true;
        } else if (c.pc == 6) {
          k.in_epilogue = -1;
          k.epi.arrive();
          c.i += 2, c.kt = 0;
          c.pc = c.i < (int)tiles.size() ? 0 : 4;
          moved = true;
        }
      }
      if (moved) break;
    }
    if (!moved) {
      for (const Prod& p : prod)
        if (p.r < total || !p.in_flight.empty()) return "deadlock";
      for (const Cons& c : cons)
        if (c.pc != 4) return "deadlock";
      return "ok";
    }
  }
  return "no end";
}

}  // namespace

TEST_CASE("wgmma ping-pong schedule protocol: no deadlock, no stage race (host model)", "[wgmma][pp]") {
  // Blocks of 1 to 7 tiles of the forward's slice counts (9: layer1, 18, 72: layer3_res), and
  // weight-gradient-like blocks whose last slab is short or empty.
  const std::vector<std::vector<int>> blocks = {{9}, {9, 9}, {9, 9, 9}, {18, 18, 18, 18, 18},
                                                {1, 1, 1, 1, 1, 1, 1}, {2, 3, 1, 5}, {72, 72, 72},
                                                {7, 7, 7, 3}, {7, 7, 0}, {4, 0, 4, 4}};
  // 3 producers stand for the cp.async producer warpgroup; 1 for the im2col tile's single TMA
  // thread, whose arrive.expect_tx completes the phase when the copy's bytes have landed.
  for (int P : {3, 1})
    for (int S : {2, 3, 4, 6})
      for (const auto& tiles : blocks)
        for (unsigned seed = 0; seed < 25; seed++) {
          INFO("producers " << P << " stages " << S << " tiles " << tiles.size() << " first k_tiles " << tiles[0]
                            << " seed " << seed);
          CHECK(run_pp(S, tiles, P, true, seed) == "ok");
        }
}

// The clustered tile (wgmma_128x128x64_s4_pp_im2col_c2): two blocks, each with one TMA producer
// whose copies land in both; a stage is refilled only when both blocks' consumers released it.
// Also clusters of 4 and 8 (the _c4, _c8 tiles; 7 stages: _s7_pp_im2col_c8), and a model of 2
// producers per block, for margin.
TEST_CASE("wgmma ping-pong schedule in clusters: no deadlock, no stage race (host model)", "[wgmma][pp]") {
  const std::vector<std::vector<int>> blocks = {{9}, {9, 9, 9}, {18, 18, 18, 18, 18}, {1, 1, 1, 1, 1, 1, 1},
                                                {2, 3, 1, 5}, {72, 72}, {7, 7, 0}};
  for (int B : {2, 4, 8})
    for (int P : {1, 2})
      for (int S : {2, 4, 7})
        for (const auto& tiles : blocks)
          for (unsigned seed = 0; seed < 10; seed++) {
            INFO("blocks " << B << " producers " << P << " stages " << S << " tiles " << tiles.size()
                           << " first k_tiles " << tiles[0] << " seed " << seed);
            CHECK(run_pp(S, tiles, P, true, seed, B) == "ok");
          }
}

TEST_CASE("wgmma ping-pong model: without the order barrier a consumer reads a stage too early", "[wgmma][pp]") {
  int races = 0;
  for (unsigned seed = 0; seed < 200; seed++) {
    const std::string res = run_pp(4, {9, 9, 9, 9}, 3, false, seed);
    if (res.find("read before it landed") != std::string::npos) races++;
  }
  CHECK(races > 0);
}

// The 5- and 6-stage tiles (wgmma_128x128x64_s5_pp_im2col, _s6_pp_im2col): their two consumers
// share one epilogue buffer, tile i's epilogue waiting for the epi barrier's phase i - 1.
TEST_CASE("wgmma ping-pong schedule with one epilogue buffer: no deadlock, no overlap (host model)", "[wgmma][pp]") {
  const std::vector<std::vector<int>> blocks = {{9}, {9, 9}, {9, 9, 9}, {18, 18, 18, 18, 18}, {1, 1, 1, 1, 1, 1, 1},
                                                {2, 3, 1, 5}, {72, 72, 72}, {7, 7, 0}, {4, 0, 4, 4}};
  for (int S : {2, 5, 6})
    for (const auto& tiles : blocks)
      for (unsigned seed = 0; seed < 25; seed++) {
        INFO("stages " << S << " tiles " << tiles.size() << " first k_tiles " << tiles[0] << " seed " << seed);
        CHECK(run_pp(S, tiles, 1, true, seed, 1, 1) == "ok");
      }
}

// The negative controls of the epilogue modes: of 200 seeds of a block of six one-slice tiles
// through S stages with epilogue mode epi, how many end in a race whose description mentions
// `what`.
namespace {
int seeds_reporting(int S, int epi, const std::string& what) {
  int found = 0;
  for (unsigned seed = 0; seed < 200; seed++)
    if (run_pp(S, {1, 1, 1, 1, 1, 1}, 1, true, seed, 1, epi).find(what) != std::string::npos) found++;
  return found;
}
}  // namespace

TEST_CASE("wgmma ping-pong model: one epilogue buffer without the epi wait overlaps", "[wgmma][pp]") {
  CHECK(seeds_reporting(5, 2, "still reads") > 0);
}

// The 7- and 9-stage tiles' fused epilogues (and the clustered 7-stage one's): no epilogue
// buffer, so a consumer runs its epilogue in its tile's last stage and releases that stage only
// after it (pp_schedule's kHold).
TEST_CASE("wgmma ping-pong schedule with the epilogue in a held stage: no deadlock, no overwrite (host model)",
          "[wgmma][pp]") {
  const std::vector<std::vector<int>> blocks = {{9}, {9, 9}, {9, 9, 9}, {18, 18, 18, 18, 18}, {1, 1, 1, 1, 1, 1, 1},
                                                {2, 3, 1, 5}, {72, 72, 72}};
  for (int B : {1, 2, 8})
    for (int S : {2, 7, 9})
      for (const auto& tiles : blocks)
        for (unsigned seed = 0; seed < 10; seed++) {
          INFO("blocks " << B << " stages " << S << " tiles " << tiles.size() << " first k_tiles " << tiles[0]
                         << " seed " << seed);
          CHECK(run_pp(S, tiles, 1, true, seed, B, 3) == "ok");
        }
}

TEST_CASE("wgmma ping-pong model: an epilogue in a stage released before it is overwritten", "[wgmma][pp]") {
  CHECK(seeds_reporting(2, 4, "epilogue") > 0);
}
