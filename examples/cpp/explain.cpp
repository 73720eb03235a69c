// Run an onnxcam-exported model with the ONNX Runtime C++ API and write its heatmap.
//
//   onnxcam export model.onnx -o model.cam.onnx --method gradcam
//   ./explain model.cam.onnx input.f32 1,3,224,224 heatmap.pgm [class]
//
// input.f32 is the preprocessed input tensor as raw little-endian float32 (for example
// `np.asarray(Explainer(m).prepare("cat.png")).tofile("input.f32")`); the heatmap of the first
// image is written as an 8-bit PGM. Without [class], the graph explains its own top-1 class.
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

static std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> dims;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) dims.push_back(std::stoll(item));
  return dims;
}

int main(int argc, char** argv) {
  if (argc < 5) {
    std::cerr << "usage: explain MODEL INPUT.f32 N,C,H,W OUT.pgm [CLASS]\n";
    return 2;
  }
  const std::vector<int64_t> shape = parse_shape(argv[3]);
  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(d);
  std::vector<float> input(count);
  std::ifstream file(argv[2], std::ios::binary);
  if (!file.read(reinterpret_cast<char*>(input.data()), count * sizeof(float))) {
    std::cerr << "cannot read " << count << " floats from " << argv[2] << "\n";
    return 1;
  }

  Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "onnxcam");
  Ort::SessionOptions options;
  options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  Ort::Session session(env, argv[1], options);
  Ort::AllocatorWithDefaultOptions allocator;
  const std::string image_input = session.GetInputNameAllocated(0, allocator).get();

  auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<const char*> input_names{image_input.c_str()};
  std::vector<Ort::Value> inputs;
  inputs.push_back(Ort::Value::CreateTensor<float>(memory, input.data(), count, shape.data(), shape.size()));
  std::vector<int64_t> classes(static_cast<size_t>(shape[0]), argc > 5 ? std::stoll(argv[5]) : -1);
  const int64_t class_shape[1] = {shape[0]};
  if (argc > 5) {  // "onnxcam/class" is optional: an overridable initializer that defaults to -1 (top-1)
    input_names.push_back("onnxcam/class");
    inputs.push_back(Ort::Value::CreateTensor<int64_t>(memory, classes.data(), classes.size(), class_shape, 1));
  }

  const char* output_names[] = {"onnxcam/map", "onnxcam/target"};
  auto outputs = session.Run(Ort::RunOptions{nullptr}, input_names.data(), inputs.data(), inputs.size(),
                             output_names, 2);
  const auto map_shape = outputs[0].GetTensorTypeAndShapeInfo().GetShape();  // [N, H, W]
  const float* heat = outputs[0].GetTensorData<float>();
  const int64_t target = outputs[1].GetTensorData<int64_t>()[0];
  const int64_t h = map_shape[1], w = map_shape[2];

  std::ofstream pgm(argv[4], std::ios::binary);
  pgm << "P5\n" << w << " " << h << "\n255\n";
  for (int64_t i = 0; i < h * w; ++i) pgm.put(static_cast<char>(static_cast<uint8_t>(heat[i] * 255.0f + 0.5f)));
  std::cout << "class " << target << ", heatmap " << w << "x" << h << " written to " << argv[4] << "\n";
  return 0;
}
