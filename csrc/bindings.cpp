// babylm_ds._C: HGRN2 forward/backward, dispatched on the inputs' device.
#include <torch/extension.h>

#ifdef WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "hgrn2_cuda.h"
#endif

#include "hgrn2_cpu.h"
#include "hgrn2_emu.h"

template <typename S>
static const S* cptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<S>() : nullptr; }
template <typename S>
static S* mptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<S>() : nullptr; }

// CPU: float64 runs in float64 (gradcheck), every other dtype in float32.
static std::tuple<at::Tensor, OptT> fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& g, double scale, const OptT& h0,
                                            bool output_final_state) {
  const auto st = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto cv = [st](const at::Tensor& t) { return t.to(st).contiguous(); };
  const at::Tensor q_ = cv(q), k_ = cv(k), v_ = cv(v), g_ = cv(g), h0_ = h0 ? cv(*h0) : at::Tensor();
  const int B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3);
  at::Tensor o = at::empty({B, T, H, V}, q_.options());
  at::Tensor ht = output_final_state ? at::empty({B, H, K, V}, q_.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(st, "hgrn2_fwd_cpu", [&] {
    hgrn2::cpu_fwd(hgrn2::Args<scalar_t>{cptr<scalar_t>(q_), cptr<scalar_t>(k_), cptr<scalar_t>(v_),
                                         cptr<scalar_t>(g_), cptr<scalar_t>(h0_), nullptr, nullptr,
                                         mptr<scalar_t>(o), mptr<scalar_t>(ht), nullptr, nullptr, nullptr, nullptr,
                                         nullptr, B, T, H, K, V, (scalar_t)scale},
                   at::get_num_threads());
  });
  OptT ht_out;
  if (output_final_state) ht_out = ht;
  return {o.to(q.scalar_type()), ht_out};
}

static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, OptT> bwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, double scale,
    const OptT& h0, const at::Tensor& dout, const OptT& dht) {
  const auto st = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto cv = [st](const at::Tensor& t) { return t.to(st).contiguous(); };
  const at::Tensor q_ = cv(q), k_ = cv(k), v_ = cv(v), g_ = cv(g), do_ = cv(dout);
  const at::Tensor h0_ = h0 ? cv(*h0) : at::Tensor(), dht_ = dht ? cv(*dht) : at::Tensor();
  const int B = q.size(0), T = q.size(1), H = q.size(2), K = q.size(3), V = v.size(3);
  at::Tensor dq = at::empty_like(q_), dk = at::empty_like(k_), dv = at::empty_like(v_), dg = at::empty_like(g_);
  at::Tensor dh0 = h0 ? at::empty_like(h0_) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(st, "hgrn2_bwd_cpu", [&] {
    hgrn2::cpu_bwd(hgrn2::Args<scalar_t>{cptr<scalar_t>(q_), cptr<scalar_t>(k_), cptr<scalar_t>(v_),
                                         cptr<scalar_t>(g_), cptr<scalar_t>(h0_), cptr<scalar_t>(do_),
                                         cptr<scalar_t>(dht_), nullptr, nullptr, mptr<scalar_t>(dq),
                                         mptr<scalar_t>(dk), mptr<scalar_t>(dv), mptr<scalar_t>(dg),
                                         mptr<scalar_t>(dh0), B, T, H, K, V, (scalar_t)scale},
                   at::get_num_threads());
  });
  OptT dh0_out;
  if (h0) dh0_out = dh0.to(h0->scalar_type());
  return {dq.to(q.scalar_type()), dk.to(k.scalar_type()), dv.to(v.scalar_type()), dg.to(g.scalar_type()), dh0_out};
}

static void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                         const OptT& h0, const OptT& cu) {
  const int64_t N = cu ? cu->size(0) - 1 : q.size(0);
  if (cu)
    TORCH_CHECK_VALUE(cu->dim() == 1 && N >= 1 && q.size(0) == 1 && !cu->is_floating_point(),
                      "hgrn2: cu_seqlens must be integer offsets [N + 1] of packed inputs with B = 1");
  TORCH_CHECK_VALUE(q.dim() == 4 && v.dim() == 4, "hgrn2: q, k, g must be [B, T, H, K] and v [B, T, H, V]");
  TORCH_CHECK_VALUE(k.sizes() == q.sizes() && g.sizes() == q.sizes(), "hgrn2: q, k, g shapes differ: ", q.sizes(),
              " ", k.sizes(), " ", g.sizes());
  TORCH_CHECK_VALUE(v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2),
              "hgrn2: v must be [B, T, H, V] matching q ", q.sizes(), ", got ", v.sizes());
  TORCH_CHECK_VALUE(q.size(1) > 0 && q.size(3) > 0 && v.size(3) > 0, "hgrn2: empty T, K or V");
  for (const auto* t : {&k, &v, &g})
    TORCH_CHECK(t->device() == q.device(), "hgrn2: all inputs must be on ", q.device());
  if (h0) {
    TORCH_CHECK_VALUE(h0->sizes() == at::IntArrayRef({N, q.size(2), q.size(3), v.size(3)}),
                "hgrn2: initial_state must be [N, H, K, V] = ", at::IntArrayRef({N, q.size(2), q.size(3), v.size(3)}),
                ", got ", h0->sizes());
    TORCH_CHECK(h0->device() == q.device(), "hgrn2: initial_state must be on ", q.device());
  }
}

#ifdef WITH_CUDA
static int cuda_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return hgrn2_cuda::kF32;
    case at::kBFloat16: return hgrn2_cuda::kBF16;
    case at::kHalf: return hgrn2_cuda::kF16;
    default: TORCH_CHECK_TYPE(false, "hgrn2 cuda: dtype must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
  return 0;
}

// Sequences: B of T rows, or (B = 1) the cu_seqlens segments of the packed rows. Offsets on the CPU
// are copied to the device (no sync); on the device they are used in place. vec: set by the caller
// (hgrn2_vec_ok) once the workspaces exist.
static hgrn2_cuda::Problem cuda_problem(const at::Tensor& q, const at::Tensor& v, double scale, const at::Tensor& cu) {
  return {cu.defined() ? (int)cu.size(0) - 1 : (int)q.size(0), (int)q.size(1), (int)q.size(2), (int)q.size(3),
          (int)v.size(3), (float)scale, cuda_dtype(q), cu.defined() ? cu.data_ptr<int>() : nullptr, false};
}

static at::Tensor f32(const OptT& t) { return t ? t->to(at::kFloat).contiguous() : at::Tensor(); }

static at::Tensor cu_on(const OptT& cu, const at::Tensor& q) {
  if (!cu) return at::Tensor();
  TORCH_CHECK_VALUE(q.size(0) == 1, "hgrn2: cu_seqlens needs packed inputs with B = 1, got B = ", q.size(0));
  return cu->to(q.device(), at::kInt, /*non_blocking=*/true).contiguous();
}

static std::tuple<at::Tensor, OptT> fwd_cuda(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor g, double scale,
                                             const OptT& h0, bool output_final_state, const OptT& cu_seqlens) {
  const c10::cuda::CUDAGuard guard(q.device());
  const auto dt = q.scalar_type();
  k = k.to(dt).contiguous(), v = v.to(dt).contiguous(), g = g.to(dt).contiguous(), q = q.contiguous();
  const at::Tensor cu = cu_on(cu_seqlens, q);
  auto p = cuda_problem(q, v, scale, cu);
  const at::Tensor h0_ = f32(h0);
  at::Tensor o = at::empty_like(v);
  auto fo = q.options().dtype(at::kFloat);
  at::Tensor states = at::empty({hgrn2_cuda::chunk_slots(p), p.H, p.K, p.V}, fo);
  at::Tensor ht = output_final_state ? at::empty({p.N, p.H, p.K, p.V}, fo) : at::Tensor();
  p.vec = hgrn2_vec_ok({q, k, v, g, states});
  const char* err = hgrn2_cuda::fwd(p, q.data_ptr(), k.data_ptr(), v.data_ptr(), g.data_ptr(), cptr<float>(h0_),
                                    o.data_ptr(), states.data_ptr<float>(), mptr<float>(ht),
                                    c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == nullptr, err);
  OptT ht_out;
  if (output_final_state) ht_out = ht;
  return {o, ht_out};
}

static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, OptT> bwd_cuda(
    at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor g, double scale, const OptT& h0, at::Tensor dout,
    const OptT& dht, const OptT& cu_seqlens) {
  const c10::cuda::CUDAGuard guard(q.device());
  const auto dt = q.scalar_type();
  k = k.to(dt).contiguous(), v = v.to(dt).contiguous(), g = g.to(dt).contiguous(), q = q.contiguous();
  dout = dout.to(dt).contiguous();
  const at::Tensor cu = cu_on(cu_seqlens, q);
  auto p = cuda_problem(q, v, scale, cu);
  const at::Tensor h0_ = f32(h0), dht_ = f32(dht);
  auto fo = q.options().dtype(at::kFloat);
  const int slots = hgrn2_cuda::chunk_slots(p);
  at::Tensor states = at::empty({slots, p.H, p.K, p.V}, fo), dh = at::empty({slots, p.H, p.K, p.V}, fo);
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v), dg = at::empty(q.sizes(), fo);
  at::Tensor dh0 = h0 ? at::empty({p.N, p.H, p.K, p.V}, fo) : at::Tensor();
  p.vec = hgrn2_vec_ok({q, k, v, g, dout, states, dh});
  const char* err = hgrn2_cuda::bwd(p, q.data_ptr(), k.data_ptr(), v.data_ptr(), g.data_ptr(), cptr<float>(h0_),
                                    dout.data_ptr(), cptr<float>(dht_), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                    dg.data_ptr<float>(), states.data_ptr<float>(), dh.data_ptr<float>(),
                                    mptr<float>(dh0), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == nullptr, err);
  OptT dh0_out;
  if (h0) dh0_out = dh0.to(h0->scalar_type());
  return {dq, dk, dv, dg.to(dt), dh0_out};
}
#endif

static std::tuple<at::Tensor, OptT> hgrn2_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              const at::Tensor& g, double scale, const OptT& h0,
                                              bool output_final_state, const OptT& cu_seqlens) {
  check_inputs(q, k, v, g, h0, cu_seqlens);
  if (q.is_cuda()) {
#ifdef WITH_CUDA
    return fwd_cuda(q, k, v, g, scale, h0, output_final_state, cu_seqlens);
#else
    TORCH_CHECK(false, "hgrn2: babylm_ds._C was built without CUDA; reinstall with BABYLM_DS_CUDA=1 or use backend='triton'/'torch'");
#endif
  }
  TORCH_CHECK(q.device().is_cpu(), "hgrn2: unsupported device ", q.device());
  TORCH_CHECK_NOT_IMPLEMENTED(!cu_seqlens, "hgrn2: the CPU kernels take no cu_seqlens; split the sequences");
  return fwd_cpu(q, k, v, g, scale, h0, output_final_state);
}

static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, OptT> hgrn2_bwd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g, double scale,
    const OptT& h0, const at::Tensor& dout, const OptT& dht, const OptT& cu_seqlens) {
  check_inputs(q, k, v, g, h0, cu_seqlens);
  TORCH_CHECK_VALUE(dout.sizes() == v.sizes(), "hgrn2: do must have v's shape ", v.sizes(), ", got ", dout.sizes());
  const int64_t N = cu_seqlens ? cu_seqlens->size(0) - 1 : q.size(0);
  if (dht)
    TORCH_CHECK_VALUE(dht->sizes() == at::IntArrayRef({N, q.size(2), q.size(3), v.size(3)}),
                "hgrn2: dht must be [N, H, K, V], got ", dht->sizes());
  if (q.is_cuda()) {
#ifdef WITH_CUDA
    return bwd_cuda(q, k, v, g, scale, h0, dout, dht, cu_seqlens);
#else
    TORCH_CHECK(false, "hgrn2: babylm_ds._C was built without CUDA; reinstall with BABYLM_DS_CUDA=1 or use backend='triton'/'torch'");
#endif
  }
  TORCH_CHECK(q.device().is_cpu(), "hgrn2: unsupported device ", q.device());
  TORCH_CHECK_NOT_IMPLEMENTED(!cu_seqlens, "hgrn2: the CPU kernels take no cu_seqlens; split the sequences");
  return bwd_cpu(q, k, v, g, scale, h0, dout, dht);
}

static bool has_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "HGRN2 chunked gated linear recurrence kernels (CPU OpenMP, CUDA).";
  m.def("hgrn2_fwd", &hgrn2_fwd, "HGRN2 forward -> (o, final_state or None)", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("g"), py::arg("scale"), py::arg("initial_state"), py::arg("output_final_state"),
        py::arg("cu_seqlens") = py::none());
  m.def("hgrn2_bwd", &hgrn2_bwd, "HGRN2 backward -> (dq, dk, dv, dg, d initial_state or None)", py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("g"), py::arg("scale"), py::arg("initial_state"), py::arg("do"),
        py::arg("dht"), py::arg("cu_seqlens") = py::none());
  m.def("hgrn2_emu_fwd", &hgrn2_emu_fwd, "the GPU kernels' forward, emulated on the CPU (mode: bf16, fp16, tf32x3, fp64)",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("g"), py::arg("scale"), py::arg("initial_state"),
        py::arg("output_final_state"), py::arg("cu_seqlens"), py::arg("mode"), py::arg("vec") = py::none(),
        py::arg("grid_max") = py::none(), py::arg("smem_optin") = py::none());
  m.def("hgrn2_emu_bwd", &hgrn2_emu_bwd, "the GPU kernels' backward, emulated on the CPU", py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("g"), py::arg("scale"), py::arg("initial_state"), py::arg("do"),
        py::arg("dht"), py::arg("cu_seqlens"), py::arg("mode"), py::arg("vec") = py::none(),
        py::arg("grid_max") = py::none(), py::arg("smem_optin") = py::none());
  m.def("hgrn2_tile_gemm", &hgrn2_tile_gemm, "one emulated warp's 16 x N tile GEMM (src: kn, nk, fn)", py::arg("a"),
        py::arg("b"), py::arg("mode"), py::arg("src"));
  m.def("hgrn2_vec_ok", &hgrn2_vec_ok, "whether the CUDA kernels load these tensors with 16-byte cp.async",
        py::arg("tensors"));
  m.def("hgrn2_smem_plan", &hgrn2_smem_plan,
        "(K1 lean, K3 lean, [K1, K2, K3 bytes], error) of the CUDA kernels on a device allowing optin bytes per block",
        py::arg("mode"), py::arg("optin"));
  m.def("hgrn2_launch_grids", &hgrn2_launch_grids, "[(kernel, grid, launch grid)] of one forward and backward call",
        py::arg("N"), py::arg("T"), py::arg("H"), py::arg("K"), py::arg("V"), py::arg("varlen"),
        py::arg("grid_max") = py::none());
  m.def("has_cuda", &has_cuda, "whether the CUDA kernels were compiled in");
  m.def("cpu_isa", &hgrn2::cpu_isa, "instruction set the CPU kernels run with");
  m.def("set_cpu_isa", &hgrn2::set_cpu_isa, "force the CPU kernels' instruction set (auto: the best)", py::arg("name"));
  m.def("cpu_isas", &hgrn2::cpu_isas, "instruction sets this CPU runs, best first");
}
