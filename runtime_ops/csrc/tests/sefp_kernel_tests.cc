// Test driver for the kernel core, run natively and under qemu-aarch64.
//
// Usage: sefp_kernel_tests CASE_FILE...
// Each case file (written by tests/runtime_ops/sefp_kernel_cases.py) holds one
// problem (a linear call, or an embedding gather), an optional reconstruction
// table, and the torch reference output with a per-element tolerance. Every
// ISA this binary has and this CPU supports is checked at 1 and 2 threads;
// then the error paths (bad bits, shapes, levels, ids) must return a Status, not crash.
// Prints one line per check; exit status 0 iff all pass.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/sefp_format.h"
#include "core/sefp_kernel.h"

namespace {

struct Case {
  int64_t n = 0, k = 0, g = 0, rows = 0, bits = 0, has_bias = 0, has_levels = 0, embedding = 0;
  int64_t act_int8_max_bits = 0;  // linear cases: int8 activations at bits <= it (docs/FORMAT.md §9)
  std::vector<float> x, bias, levels, y_ref, tol;
  std::vector<int64_t> ids;  // embedding cases: rows ids instead of x
  std::vector<uint8_t> p0, p1, p2, p3;
  std::vector<int8_t> e;
};

template <typename T>
bool read_array(std::ifstream& in, std::vector<T>& v, int64_t count) {
  v.resize(static_cast<size_t>(count));
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(T)));
  return static_cast<bool>(in);
}

bool load_case(const char* path, Case& c) {
  std::ifstream in(path, std::ios::binary);
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "SEFPCAS3", 8) != 0) return false;
  int64_t header[9];
  in.read(reinterpret_cast<char*>(header), sizeof header);
  if (!in) return false;
  c.n = header[0], c.k = header[1], c.g = header[2], c.rows = header[3], c.bits = header[4], c.has_bias = header[5];
  c.has_levels = header[6], c.embedding = header[7], c.act_int8_max_bits = header[8];
  const int64_t out_cols = c.embedding ? c.k : c.n;
  const bool inputs = c.embedding ? read_array(in, c.ids, c.rows) : read_array(in, c.x, c.rows * c.k);
  return inputs && read_array(in, c.p0, c.n * c.g * otaro::kPlaneBytesPerGroup[0]) &&
         read_array(in, c.p1, c.n * c.g * otaro::kPlaneBytesPerGroup[1]) &&
         read_array(in, c.p2, c.n * c.g * otaro::kPlaneBytesPerGroup[2]) &&
         read_array(in, c.p3, c.n * c.g * otaro::kPlaneBytesPerGroup[3]) && read_array(in, c.e, c.n * c.g) &&
         read_array(in, c.bias, c.has_bias ? c.n : 0) &&
         read_array(in, c.levels, c.has_levels ? otaro::kLevelsRows * otaro::kLevelsCols : 0) &&
         read_array(in, c.y_ref, c.rows * out_cols) && read_array(in, c.tol, c.rows * out_cols);
}

otaro::SEFPWeightView view(const Case& c) {
  return {c.p0.data(), c.p1.data(), c.p2.data(),
          c.p3.data(), c.e.data(),  c.n,
          c.k,         c.g,         c.has_levels ? c.levels.data() : nullptr};
}

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
  if (!ok) ++failures;
}

void run_case(const char* path) {
  Case c;
  if (!load_case(path, c)) {
    check(false, std::string("read ") + path);
    return;
  }
  const std::string shape = std::string(c.embedding ? "embedding" : "linear") + " N=" + std::to_string(c.n) +
                            " K=" + std::to_string(c.k) + " rows=" + std::to_string(c.rows) +
                            " bits=" + std::to_string(c.bits) + (c.has_levels ? " levels" : "") +
                            (c.act_int8_max_bits ? " int8" : "");
  for (otaro::Isa isa : {otaro::Isa::kScalar, otaro::Isa::kAvx2, otaro::Isa::kAvx512, otaro::Isa::kNeon}) {
    if (!otaro::isa_available(isa)) continue;
    for (int threads : {1, 2}) {
      std::vector<float> y(static_cast<size_t>(c.rows * (c.embedding ? c.k : c.n)), NAN);
      const otaro::Status s =
          c.embedding
              ? otaro::sefp_embedding(c.ids.data(), c.rows, view(c), static_cast<int>(c.bits), y.data(), threads, isa)
              : otaro::sefp_linear(c.x.data(), c.rows, view(c), c.has_bias ? c.bias.data() : nullptr,
                                   static_cast<int>(c.bits), y.data(), threads, isa,
                                   static_cast<int>(c.act_int8_max_bits));
      double worst = 0.0;  // largest |err| / tol (0 tol: exact)
      bool ok = s == otaro::Status::kOk;
      for (size_t i = 0; ok && i < y.size(); ++i) {
        const double err = std::fabs(static_cast<double>(y[i]) - c.y_ref[i]);
        if (!(err <= c.tol[i])) ok = false;  // also catches NaN
        if (c.tol[i] > 0) worst = std::fmax(worst, err / c.tol[i]);
      }
      char buf[64];
      std::snprintf(buf, sizeof buf, " err/tol=%.3g", worst);
      check(ok, std::string(otaro::isa_name(isa)) + " threads=" + std::to_string(threads) + " " + shape + buf);
    }
  }
}

void check_errors() {
  std::vector<uint8_t> p0(32), p1(16), p2(16), p3(8);
  std::vector<int8_t> e(1);
  std::vector<float> x(64, 1.0f), y(1, 0.0f);
  const otaro::SEFPWeightView w{p0.data(), p1.data(), p2.data(), p3.data(), e.data(), 1, 64, 1, nullptr};
  for (int bits : {-1, 0, 2, 9, 100}) {
    const otaro::Status s = otaro::sefp_linear(x.data(), 1, w, nullptr, bits, y.data());
    check(s == otaro::Status::kInvalidBits, "bits=" + std::to_string(bits) + " rejected");
  }
  otaro::SEFPWeightView bad = w;
  bad.in_features = 65;  // more than one group holds
  check(otaro::sefp_linear(x.data(), 1, bad, nullptr, 4, y.data()) == otaro::Status::kInvalidShape,
        "in_features > groups*64 rejected");
  bad.in_features = 0;  // 1 group but no features
  check(otaro::sefp_linear(x.data(), 1, bad, nullptr, 4, y.data()) == otaro::Status::kInvalidShape,
        "in_features <= (groups-1)*64 rejected");
  bad = w;
  bad.p1 = nullptr;
  check(otaro::sefp_linear(x.data(), 1, bad, nullptr, 4, y.data()) == otaro::Status::kInvalidShape,
        "missing plane p1 at bits=4 rejected");
  check(otaro::sefp_linear(x.data(), 1, bad, nullptr, 3, y.data()) == otaro::Status::kOk,
        "plane p1 not needed at bits=3");
  check(otaro::sefp_linear(x.data(), -1, w, nullptr, 4, y.data()) == otaro::Status::kInvalidShape,
        "negative rows rejected");

  std::vector<float> levels(otaro::kLevelsRows * otaro::kLevelsCols, 1.0f);
  otaro::SEFPWeightView with_levels = w;
  with_levels.levels = levels.data();
  levels[1 * otaro::kLevelsCols + 3] = -1.0f;  // row E5M4, level 3
  check(otaro::sefp_linear(x.data(), 1, with_levels, nullptr, 4, y.data()) == otaro::Status::kInvalidLevels,
        "negative level rejected");
  check(otaro::sefp_linear(x.data(), 1, with_levels, nullptr, 5, y.data()) == otaro::Status::kOk,
        "a bad level in another precision's row is not read");
  levels[1 * otaro::kLevelsCols + 3] = NAN;
  check(otaro::sefp_linear(x.data(), 1, with_levels, nullptr, 4, y.data()) == otaro::Status::kInvalidLevels,
        "NaN level rejected");

  std::vector<float> row(64, 0.0f);
  for (int64_t bad : {int64_t{-1}, int64_t{1}, int64_t{1} << 40}) {
    const int64_t ids[2] = {0, bad};
    int64_t where = -1;
    const otaro::Status s = otaro::sefp_embedding(ids, 2, w, 5, row.data(), 1, otaro::Isa::kAuto, &where);
    check(s == otaro::Status::kInvalidIndex && where == 1, "embedding id " + std::to_string(bad) + " rejected");
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::printf("best isa: %s\n", otaro::isa_name(otaro::best_isa()));
  std::printf("int8 kernel: %s\n", otaro::int8_kernel_name(otaro::best_isa()));
  for (int i = 1; i < argc; ++i) run_case(argv[i]);
  check_errors();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
