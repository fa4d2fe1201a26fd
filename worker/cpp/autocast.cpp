// bfloat16 autocast for one device type, which tch 0.24 does not expose: its
// `tch::autocast` switches the legacy CUDA-only flag, whose default type is float16.
// Autocast state is thread-local in libtorch, so each training thread sets its own.
// No C++ exception crosses into Rust: every entry point catches and reports -1.
#include <ATen/autocast_mode.h>

namespace {
c10::DeviceType device_type(int cuda) { return cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU; }
}  // namespace

extern "C" {

// Enters a bf16 autocast region on CUDA (cuda != 0) or the CPU. On success returns the
// state to restore on exit: bit 0 whether autocast was enabled, bits 8.. the type it had
// (libtorch's ScalarType number). Returns -1 if libtorch threw; nothing was changed then.
int feral_autocast_bf16_enter(int cuda) {
  try {
    auto device = device_type(cuda);
    bool was_enabled = at::autocast::is_autocast_enabled(device);
    int previous_type = static_cast<int>(at::autocast::get_autocast_dtype(device));
    at::autocast::set_autocast_dtype(device, at::kBFloat16);
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::increment_nesting();
    return (previous_type << 8) | (was_enabled ? 1 : 0);
  } catch (...) {
    return -1;
  }
}

// Leaves the region entered by `feral_autocast_bf16_enter`, restoring the `state` it
// returned; the outermost exit drops the cache of casted weights. Returns 0, or -1 if
// libtorch threw.
int feral_autocast_exit(int cuda, int state) {
  try {
    auto device = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_dtype(device, static_cast<at::ScalarType>(state >> 8));
    at::autocast::set_autocast_enabled(device, (state & 1) != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}

// The type autocast gives a matrix product on the device now (5 = float16, 15 = bfloat16,
// libtorch's ScalarType numbering), or -1 when autocast is off there or libtorch threw.
int feral_autocast_dtype(int cuda) {
  try {
    auto device = device_type(cuda);
    if (!at::autocast::is_autocast_enabled(device)) return -1;
    return static_cast<int>(at::autocast::get_autocast_dtype(device));
  } catch (...) {
    return -1;
  }
}
}
