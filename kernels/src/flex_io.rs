//! Tensors of the CPU backend (Flex) in and out of the kernels' plain `f32` slices.

use burn::tensor::{DType, Shape, TensorData};
use burn_flex::FlexTensor;

/// The tensor in contiguous f32 layout (no copy when it already is); `op` and `name` say
/// which input of which op was of another dtype.
pub(crate) fn contiguous_f32(t: FlexTensor, op: &str, name: &str) -> FlexTensor {
    assert_eq!(
        t.dtype(),
        DType::F32,
        "{op}: `{name}` must be f32 (got {:?}); cast before calling",
        t.dtype()
    );
    t.to_contiguous()
}

/// A Flex tensor owning `data`.
pub(crate) fn flex(data: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape.into()))
}
