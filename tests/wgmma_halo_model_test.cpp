// A host model of the halo tile's protocol (conv_fwd_wgmma_halo_kernel in
// kernels/conv/wgmma_halo.cu), run over random interleavings, as the ping-pong schedule's model
// (tests/wgmma_pp_model_test.cpp) runs pp_schedule's:
//   - one producer thread walks the block's units; per unit and 64-channel slice it waits for
//     a_empty[ra % SA] (from ra >= SA on), issues the A copy (the padded rows) into that buffer,
//     then per filter tap waits for b_empty[rb % SB] (from rb >= SB on) and issues the B copy;
//     each copy's phase of its full barrier completes when it lands, at a random time, in any
//     order (separate TMA copies);
//   - 2 consumer warpgroups, one agent each: the block's unit i is consumer i % 2's; before it
//     (i > 0) the consumer waits for the order barrier's phase (i - 1) / 2; per slice (channel
//     slice cs, tap t) it waits for a_full (at t = 0) and b_full, issues its MMAs (reading both
//     stages; they complete at random times, in order), waits until at most one slice's MMAs
//     are pending, then releases the previous slice's B stage and, at t = 0 of a later channel
//     slice, the previous A buffer; after the unit it arrives on the other consumer's order
//     barrier, waits for all its MMAs and releases the last B stage and A buffer.
// Asserted: every run ends (no deadlock); MMAs read an A buffer and a B stage only when the very
// copies they need have landed there; no copy is issued into, or lands in, a buffer or stage
// whose MMAs on an older copy are pending. Without the order barrier the model reads too early.
#include <algorithm>
#include <catch2/catch.hpp>
#include <random>
#include <string>
#include <vector>

#include "tests/mbarrier_model.h"

namespace {

using model::Barrier;

// One ring of stages (the A buffers or the B stages): barriers, what landed where, what is read.
struct Ring {
  int stages;
  std::vector<Barrier> full, empty;
  std::vector<int> landed;                // stage -> copy number that landed last
  std::vector<std::vector<int>> reading;  // stage -> copies with MMAs pending
  explicit Ring(int s) : stages(s), full(s, Barrier{1}), empty(s, Barrier{1}), landed(s, -1), reading(s) {}
};

// `units` units of cs channel slices x taps filter taps each, SA A buffers, SB B stages.
// "ok", "deadlock" or a description of the race.
std::string run_halo(int SA, int SB, int units, int cs, int taps, bool ordered, unsigned seed) {
  std::mt19937 rng(seed);
  Ring a(SA), b(SB);
  std::vector<Barrier> order(2, Barrier{1});
  // The producer's program: (ring 0 = A / 1 = B, copy number), in issue order.
  std::vector<std::pair<int, int>> program;
  for (int u = 0, ra = 0, rb = 0; u < units; u++)
    for (int c = 0; c < cs; c++) {
      program.push_back({0, ra++});
      for (int t = 0; t < taps; t++) program.push_back({1, rb++});
    }
  size_t pc_prod = 0;
  std::vector<std::pair<int, int>> in_flight;  // issued copies, not yet landed
  // Consumer g: its unit i, the slice (c, t) in it, pc: 0 order wait, 1 a_full wait, 2 b_full
  // wait, 3 wait for <= 1 pending, 4 wait for 0 pending, 5 done.
  struct Cons {
    int i = 0, c = 0, t = 0, pc = 0;
    std::vector<std::pair<int, int>> pending;  // (A copy, B copy) of the MMAs issued
  };
  std::vector<Cons> cons(2);
  for (int g = 0; g < 2; g++) {
    cons[g].i = g;
    if (g >= units) cons[g].pc = 5;
  }
  auto issue_ok = [](Ring& r, int n) { return r.reading[n % r.stages].empty(); };
  for (int step = 0; step < 4000000; step++) {
    // (kind, index): 0 producer step, 1 a copy lands, 2 consumer step, 3 MMAs complete
    std::vector<std::pair<int, int>> acts;
    if (pc_prod < program.size()) acts.push_back({0, 0});
    for (size_t j = 0; j < in_flight.size(); j++) acts.push_back({1, (int)j});
    for (int g = 0; g < 2; g++) {
      if (cons[g].pc != 5) acts.push_back({2, g});
      if (!cons[g].pending.empty()) acts.push_back({3, g});
    }
    std::shuffle(acts.begin(), acts.end(), rng);
    bool moved = false;
    for (auto [kind, x] : acts) {
      if (kind == 0) {
        const auto [which, n] = program[pc_prod];
        Ring& r = which == 0 ? a : b;
        const int st = n % r.stages;
        if (n >= r.stages && !r.empty[st].passed((n / r.stages - 1) & 1)) continue;
        if (!issue_ok(r, n))
          return std::string(which ? "B" : "A") + " copy " + std::to_string(n) + " issued into a stage being read";
        in_flight.push_back(program[pc_prod++]);
        moved = true;
      } else if (kind == 1) {
        const auto [which, n] = in_flight[x];
        Ring& r = which == 0 ? a : b;
        const int st = n % r.stages;
        for (int old : r.reading[st])
          if (old != n)
            return std::string(which ? "B" : "A") + " copy " + std::to_string(n) + " lands while " +
                   std::to_string(old) + " is read";
        in_flight.erase(in_flight.begin() + x);
        r.landed[st] = n;
        r.full[st].arrive();
        moved = true;
      } else if (kind == 3) {
        Cons& k = cons[x];
        const auto [na, nb] = k.pending.front();
        k.pending.erase(k.pending.begin());
        auto& ra = a.reading[na % SA];
        ra.erase(std::find(ra.begin(), ra.end(), na));
        auto& rb = b.reading[nb % SB];
        rb.erase(std::find(rb.begin(), rb.end(), nb));
        moved = true;
      } else {
        Cons& k = cons[x];
        const int g = x;
        const int na = k.i * cs + k.c, nb = (k.i * cs + k.c) * taps + k.t;  // this slice's copies
        if (k.pc == 0) {
          if (ordered && k.i > 0 && !order[g].passed(((k.i - 1) >> 1) & 1)) continue;
          k.pc = 1;
          moved = true;
        } else if (k.pc == 1) {
          if (k.t == 0) {
            if (!a.full[na % SA].passed((na / SA) & 1)) continue;
            if (a.landed[na % SA] != na) return "A copy " + std::to_string(na) + " read before it landed";
          }
          k.pc = 2;
          moved = true;
        } else if (k.pc == 2) {
          if (!b.full[nb % SB].passed((nb / SB) & 1)) continue;
          if (b.landed[nb % SB] != nb) return "B copy " + std::to_string(nb) + " read before it landed";
          if (a.landed[na % SA] != na) return "A copy " + std::to_string(na) + " overwritten while its unit reads it";
          k.pending.push_back({na, nb});
          a.reading[na % SA].push_back(na);
          b.reading[nb % SB].push_back(nb);
          k.pc = 3;
          moved = true;
        } else if (k.pc == 3) {
          if (k.pending.size() > 1) continue;
          const bool first_tap = k.t == 0;
          if (k.c > 0 || !first_tap) b.empty[(nb - 1) % SB].arrive();
          if (k.c > 0 && first_tap) a.empty[(na - 1) % SA].arrive();
          if (++k.t == taps) k.t = 0, k.c++;
          if (k.c < cs) {
            k.pc = 1;
          } else {
            order[g ^ 1].arrive();
            k.pc = 4;
          }
          moved = true;
        } else if (k.pc == 4) {
          if (!k.pending.empty()) continue;
          const int last_a = k.i * cs + cs - 1, last_b = (k.i * cs + cs) * taps - 1;
          b.empty[last_b % SB].arrive();
          a.empty[last_a % SA].arrive();
          k.i += 2, k.c = 0, k.t = 0;
          k.pc = k.i < units ? 0 : 5;
          moved = true;
        }
      }
      if (moved) break;
    }
    if (!moved) {
      if (pc_prod < program.size() || !in_flight.empty()) return "deadlock";
      for (const Cons& k : cons)
        if (k.pc != 5) return "deadlock";
      return "ok";
    }
  }
  return "no end";
}

}  // namespace

// The tile's rings (2 A buffers, 5 B stages) and smaller ones, on the recipe's slice counts: 1
// channel slice of 9 taps (layer1), 2 and 8 (layer1_res, layer3_res), the 1x1 conv's taps, and
// a single unit per block.
TEST_CASE("wgmma halo tile protocol: no deadlock, no stage race (host model)", "[wgmma][pp]") {
  struct Shape {
    int units, cs, taps;
  };
  const Shape shapes[] = {{1, 1, 9}, {4, 1, 9}, {5, 2, 9}, {3, 8, 9}, {6, 1, 1}, {3, 4, 1}, {7, 3, 25}};
  for (int SA : {2, 3})
    for (int SB : {2, 5})
      for (const Shape& s : shapes)
        for (unsigned seed = 0; seed < 15; seed++) {
          INFO("A buffers " << SA << " B stages " << SB << " units " << s.units << " channel slices " << s.cs
                            << " taps " << s.taps << " seed " << seed);
          CHECK(run_halo(SA, SB, s.units, s.cs, s.taps, true, seed) == "ok");
        }
}

TEST_CASE("wgmma halo model: without the order barrier a consumer reads too early", "[wgmma][pp]") {
  int races = 0;
  for (unsigned seed = 0; seed < 200; seed++) {
    const std::string res = run_halo(2, 5, 6, 2, 9, false, seed);
    if (res.find("before it landed") != std::string::npos || res.find("overwritten") != std::string::npos) races++;
  }
  CHECK(races > 0);
}

// Why two A buffers (and at least two B stages): a consumer releases a slice's stage only after
// it has issued the next slice's MMAs, so with one A buffer the second channel slice's copy waits
// for a release that waits for it.
TEST_CASE("wgmma halo model: one A buffer or one B stage deadlocks", "[wgmma][pp]") {
  CHECK(run_halo(1, 5, 2, 2, 9, true, 1) == "deadlock");
  CHECK(run_halo(2, 1, 2, 1, 9, true, 1) == "deadlock");
}
