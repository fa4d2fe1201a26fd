// bfloat16 autocast for one device type, which tch 0.24 does not expose: its
// `tch::autocast` switches the legacy CUDA-only flag, whose default type is float16.
// Autocast state is thread-local in libtorch, so each training thread sets its own.
#include <ATen/autocast_mode.h>

namespace {
c10::DeviceType device_type(int cuda) { return cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU; }
}  // namespace

extern "C" {

// Enters a bf16 autocast region on CUDA (cuda != 0) or the CPU. Returns whether autocast
// was enabled before, and -1 if libtorch threw.
int feral_autocast_bf16_enter(int cuda) {
  try {
    auto device = device_type(cuda);
    bool was_enabled = at::autocast::is_autocast_enabled(device);
    at::autocast::set_autocast_dtype(device, at::kBFloat16);
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::increment_nesting();
    return was_enabled ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// Leaves the region entered by `feral_autocast_bf16_enter`, restoring `was_enabled`; the
// outermost exit drops the cache of casted weights.
void feral_autocast_exit(int cuda, int was_enabled) {
  try {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device_type(cuda), was_enabled != 0);
  } catch (...) {
  }
}

// The type autocast gives a matrix product on the device now (5 = float16, 15 = bfloat16,
// libtorch's ScalarType numbering), or -1 when autocast is off there.
int feral_autocast_dtype(int cuda) {
  auto device = device_type(cuda);
  if (!at::autocast::is_autocast_enabled(device)) return -1;
  return static_cast<int>(at::autocast::get_autocast_dtype(device));
}
}
