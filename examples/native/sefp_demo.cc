// Native demo runner: ONE mmap'd SEFP weight file, a precision chosen per task.
//
//   sefp_demo MODEL.sefpdemo NAME:BITS [NAME:BITS ...]
//
// MODEL.sefpdemo (written by write_demo_model.py) holds a small stack of SEFP
// linear layers in the packed plane layout of otaro_export/packing.py, plus a
// few input vectors. Each task runs the stack on input (task index mod
// inputs) at E5M<BITS> through the project's kernel core
// (runtime_ops/csrc/core/sefp_kernel.h) and prints its logits, its latency and
// how much of the weight file is resident. Every plane starts on a 64 KiB
// boundary, so the mapping's resident size shows which planes a precision
// touched: E5M3 reads only p0 + exponents.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/sefp_kernel.h"

namespace {

constexpr char kMagic[8] = {'O', 'T', 'S', 'E', 'F', 'P', 'D', '1'};
constexpr uint32_t kVersion = 1;

#pragma pack(push, 1)
struct FileHeader {  // little-endian, mirrors write_demo_model.py
  char magic[8];
  uint32_t version;
  uint32_t num_layers;
  uint32_t input_dim;
  uint32_t num_inputs;
  uint64_t inputs_offset;  // float32 [num_inputs, input_dim]
};
struct LayerRecord {
  int64_t out_features, in_features, num_groups;
  uint64_t p0, p1, p2, p3, exponents, bias;  // byte offsets; bias == 0: no bias
  uint32_t relu;                             // apply ReLU after this layer
  uint32_t reserved;
};
#pragma pack(pop)

struct Layer {
  otaro::SEFPWeightView view;
  const float* bias;
  bool relu;
};

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "sefp_demo: error: %s\n", message.c_str());
  std::exit(2);
}

// Resident KiB of the mapping that contains `addr` (/proc/self/smaps), or -1.
long mapping_rss_kib(const void* addr) {
  std::ifstream smaps("/proc/self/smaps");
  const auto target = reinterpret_cast<uintptr_t>(addr);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR, &lo, &hi) == 2 && line.find(':') > line.find('-')) {
      inside = lo <= target && target < hi;
    } else if (inside && line.rfind("Rss:", 0) == 0) {
      return std::strtol(line.c_str() + 4, nullptr, 10);
    }
  }
  return -1;
}

struct Mapping {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

Mapping map_file(const char* path) {
  const int fd = open(path, O_RDONLY);
  if (fd < 0) fail(std::string("cannot open ") + path);
  struct stat st{};
  if (fstat(fd, &st) != 0 || st.st_size < static_cast<off_t>(sizeof(FileHeader))) fail("file too small");
  // Start cold: drop this file's clean cached pages (written by Python just before, maybe as
  // large folios), so the resident size below counts only the pages this run reads.
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  void* p = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) fail("mmap failed");
  // No readahead: pages become resident only when a kernel reads them.
  madvise(p, static_cast<size_t>(st.st_size), MADV_RANDOM);
  return {static_cast<const uint8_t*>(p), static_cast<size_t>(st.st_size)};
}

const uint8_t* at(const Mapping& m, uint64_t offset, uint64_t bytes, const char* what) {
  if (offset > m.size || bytes > m.size - offset) fail(std::string(what) + " lies outside the file");
  return m.data + offset;
}

std::vector<Layer> read_layers(const Mapping& m, const FileHeader& h) {
  std::vector<Layer> layers;
  int64_t width = h.input_dim;
  for (uint32_t i = 0; i < h.num_layers; ++i) {
    LayerRecord r;
    std::memcpy(&r, at(m, sizeof(FileHeader) + i * sizeof(LayerRecord), sizeof r, "layer table"), sizeof r);
    if (r.in_features != width || r.out_features <= 0 || r.num_groups <= 0 || r.num_groups > (1 << 24))
      fail("layer " + std::to_string(i) + " has inconsistent dimensions");
    const uint64_t n = static_cast<uint64_t>(r.out_features), g = static_cast<uint64_t>(r.num_groups);
    Layer l{};
    l.view.p0 = at(m, r.p0, n * g * 32, "p0");
    l.view.p1 = at(m, r.p1, n * g * 16, "p1");
    l.view.p2 = at(m, r.p2, n * g * 16, "p2");
    l.view.p3 = at(m, r.p3, n * g * 8, "p3");
    l.view.exponents = reinterpret_cast<const int8_t*>(at(m, r.exponents, n * g, "exponents"));
    l.view.out_features = r.out_features;
    l.view.in_features = r.in_features;
    l.view.num_groups = r.num_groups;
    l.bias = r.bias ? reinterpret_cast<const float*>(at(m, r.bias, n * 4, "bias")) : nullptr;
    l.relu = r.relu != 0;
    layers.push_back(l);
    width = r.out_features;
  }
  return layers;
}

struct Task {
  std::string name;
  int bits;
};

Task parse_task(const char* arg) {
  const std::string s(arg);
  const auto colon = s.rfind(':');
  char* end = nullptr;
  const long bits = colon == std::string::npos ? 0 : std::strtol(s.c_str() + colon + 1, &end, 10);
  if (colon == std::string::npos || colon == 0 || end == s.c_str() + colon + 1 || *end != '\0')
    fail("task '" + s + "' must be NAME:BITS, e.g. classify:3");
  return {s.substr(0, colon), static_cast<int>(bits)};  // range checked by the kernel core
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL.sefpdemo NAME:BITS [NAME:BITS ...]\n", argv[0]);
    return 2;
  }
  std::vector<Task> tasks;
  for (int i = 2; i < argc; ++i) tasks.push_back(parse_task(argv[i]));

  const auto t_load = std::chrono::steady_clock::now();
  const Mapping m = map_file(argv[1]);
  FileHeader h;
  std::memcpy(&h, m.data, sizeof h);
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0 || h.version != kVersion)
    fail(std::string(argv[1]) + " is not a version-1 SEFP demo model");
  if (h.num_inputs == 0 || h.num_layers == 0) fail("the model has no layers or no inputs");
  const std::vector<Layer> layers = read_layers(m, h);
  const auto* inputs =
      reinterpret_cast<const float*>(at(m, h.inputs_offset, uint64_t{h.num_inputs} * h.input_dim * 4, "inputs"));
  const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_load).count();
  std::printf("model %s: %u layers, %zu bytes, mapped once in %.2f ms at %p; kernel isa %s\n", argv[1], h.num_layers,
              m.size, load_ms, static_cast<const void*>(m.data), otaro::isa_name(otaro::best_isa()));
  std::printf("resident_kib before_tasks %ld\n", mapping_rss_kib(m.data));

  for (size_t t = 0; t < tasks.size(); ++t) {
    const Task& task = tasks[t];
    std::vector<float> x(inputs + (t % h.num_inputs) * h.input_dim, inputs + (t % h.num_inputs + 1) * h.input_dim);
    const auto t0 = std::chrono::steady_clock::now();
    for (const Layer& l : layers) {
      std::vector<float> y(static_cast<size_t>(l.view.out_features));
      const otaro::Status st = otaro::sefp_linear(x.data(), 1, l.view, l.bias, task.bits, y.data());
      if (st != otaro::Status::kOk) fail("task '" + task.name + "': " + otaro::status_message(st));
      if (l.relu)
        for (float& v : y) v = v > 0.0f ? v : 0.0f;
      x.swap(y);
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    size_t best = 0;
    for (size_t i = 1; i < x.size(); ++i)
      if (x[i] > x[best]) best = i;
    std::printf("task %s E5M%d class %zu latency_ms %.3f resident_kib %ld\n", task.name.c_str(), task.bits, best, ms,
                mapping_rss_kib(m.data));
    std::ostringstream logits;
    logits.precision(9);
    for (float v : x) logits << ' ' << v;
    std::printf("logits%s\n", logits.str().c_str());
  }
  return 0;
}
