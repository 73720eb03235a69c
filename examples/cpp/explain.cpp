// Run an onnxcam-exported model with the ONNX Runtime C++ API and write its heatmap.
//
//   onnxcam export model.onnx -o model.cam.onnx --method gradcam
//   ./explain model.cam.onnx input.f32 1,3,224,224 heatmap.pgm [class]
//
// input.f32 is the preprocessed input tensor as raw little-endian float32 (for example
// `np.asarray(Explainer(m).prepare("cat.png")).tofile("input.f32")`). OUT ending in .f32 gets
// every map as raw float32 [N, H, W]; any other name gets the heatmap of the first image as an
// 8-bit PGM. Without [class], the graph explains each image's own top-1 class.
// Works with both `--class-input optional` and `--class-input required` exports.
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

static const char* const kClassInput = "onnxcam/class";

static int64_t parse_int(const std::string& text, const char* what) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) throw std::invalid_argument(std::string("bad ") + what + " '" + text + "'");
  return value;
}

static std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> dims;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    dims.push_back(parse_int(item, "dimension"));
    if (dims.back() <= 0) throw std::invalid_argument("bad dimension '" + item + "' in shape " + text);
  }
  if (dims.empty()) throw std::invalid_argument("empty shape");
  return dims;
}

// The string value of "key" in the flat JSON object that onnxcam writes to the "onnxcam.export"
// metadata (names such as "image_input" and "logits"); "" when absent. Not a general JSON parser.
static std::string json_string(const std::string& json, const std::string& key) {
  size_t at = json.find("\"" + key + "\"");
  if (at == std::string::npos) return "";
  at = json.find_first_not_of(" \t\n", at + key.size() + 2);
  if (at == std::string::npos || json[at] != ':') return "";
  at = json.find_first_not_of(" \t\n", at + 1);
  if (at == std::string::npos || json[at] != '"') return "";
  std::string value;
  for (++at; at < json.size() && json[at] != '"'; ++at) {
    if (json[at] == '\\' && at + 1 < json.size()) ++at;  // \" and \\ (other escapes are not expected in names)
    value += json[at];
  }
  return value;
}

static bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

static int run(int argc, char** argv) {
  const std::vector<int64_t> shape = parse_shape(argv[3]);
  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(d);
  std::vector<float> input(count);
  std::ifstream file(argv[2], std::ios::binary);
  if (!file.read(reinterpret_cast<char*>(input.data()), static_cast<std::streamsize>(count * sizeof(float))) ||
      file.peek() != std::ifstream::traits_type::eof()) {
    std::cerr << argv[2] << " does not hold exactly " << count << " float32 values (shape " << argv[3] << ")\n";
    return 1;
  }

  Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "onnxcam");
  Ort::SessionOptions options;
  options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  Ort::Session session(env, argv[1], options);  // ORTCHAR_T is char on Linux and macOS
  Ort::AllocatorWithDefaultOptions allocator;
  // onnxcam export describes itself in the "onnxcam.export" metadata (JSON).
  Ort::ModelMetadata metadata = session.GetModelMetadata();
  const Ort::AllocatedStringPtr export_json = metadata.LookupCustomMetadataMapAllocated("onnxcam.export", allocator);
  const std::string meta = export_json ? export_json.get() : "";
  if (meta.empty()) {
    std::cerr << argv[1] << " is not an onnxcam export (no onnxcam.export metadata)\n";
    return 1;
  }
  // The image input: as the metadata names it, else the first declared input other than the class
  // (a `--class-input required` export declares "onnxcam/class" as a plain input; an optional one
  // is an overridable initializer, outside this list).
  const std::string named_input = json_string(meta, "image_input");
  std::string image_input;
  for (size_t i = 0; i < session.GetInputCount(); ++i) {
    std::string name = session.GetInputNameAllocated(i, allocator).get();
    if (name == named_input) {
      image_input = name;
      break;
    }
    if (image_input.empty() && name != kClassInput) image_input = name;
  }
  if (image_input.empty()) {
    std::cerr << argv[1] << " has no image input\n";
    return 1;
  }
  // The number of classes, from the scores output's last dimension where it is static: the graph
  // itself does not check [class] (an out-of-range class gives an all-zero map).
  int64_t num_classes = -1;
  const std::string logits = json_string(meta, "logits");
  for (size_t i = 0; i < session.GetOutputCount(); ++i) {
    if (logits != session.GetOutputNameAllocated(i, allocator).get()) continue;
    const auto dims = session.GetOutputTypeInfo(i).GetTensorTypeAndShapeInfo().GetShape();
    if (!dims.empty()) num_classes = dims.back();
  }
  const int64_t target_class = argc > 5 ? parse_int(argv[5], "class") : -1;
  if (target_class < -1 || (num_classes > 0 && target_class >= num_classes)) {
    std::cerr << "class " << target_class << " is out of range: -1 (top-1) or 0.."
              << (num_classes > 0 ? std::to_string(num_classes - 1) : std::string("N-1")) << "\n";
    return 1;
  }

  auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<Ort::Value> inputs;
  inputs.push_back(Ort::Value::CreateTensor<float>(memory, input.data(), count, shape.data(), shape.size()));
  // "onnxcam/class" is always fed: -1 (top-1) unless [class] is given. An optional class is an
  // overridable initializer that defaults to -1 and may be left unfed, but a required one must be fed.
  std::vector<int64_t> classes(static_cast<size_t>(shape[0]), target_class);
  const int64_t class_shape[1] = {shape[0]};
  inputs.push_back(Ort::Value::CreateTensor<int64_t>(memory, classes.data(), classes.size(), class_shape, 1));
  const char* input_names[] = {image_input.c_str(), kClassInput};

  const char* output_names[] = {"onnxcam/map", "onnxcam/target"};
  auto outputs = session.Run(Ort::RunOptions{nullptr}, input_names, inputs.data(), inputs.size(), output_names, 2);
  const auto map_shape = outputs[0].GetTensorTypeAndShapeInfo().GetShape();  // [N, H, W]
  const float* heat = outputs[0].GetTensorData<float>();
  const int64_t* targets = outputs[1].GetTensorData<int64_t>();
  const int64_t n = map_shape[0], h = map_shape[1], w = map_shape[2];

  const std::string out = argv[4];
  std::ofstream dest(out, std::ios::binary);
  if (ends_with(out, ".f32")) {
    dest.write(reinterpret_cast<const char*>(heat), static_cast<std::streamsize>(n * h * w * sizeof(float)));
  } else {
    dest << "P5\n" << w << " " << h << "\n255\n";
    for (int64_t i = 0; i < h * w; ++i) {
      const float v = std::min(std::max(heat[i], 0.0f), 1.0f);  // the map is in [0, 1]
      dest.put(static_cast<char>(static_cast<uint8_t>(v * 255.0f + 0.5f)));
    }
  }
  if (!dest.flush()) {
    std::cerr << "cannot write " << out << "\n";
    return 1;
  }
  std::cout << "class";
  for (int64_t i = 0; i < n; ++i) std::cout << " " << targets[i];
  std::cout << ", heatmap " << w << "x" << h << " written to " << out << "\n";
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 5 || argc > 6) {
    std::cerr << "usage: explain MODEL INPUT.f32 N,C,H,W OUT.pgm|OUT.f32 [CLASS]\n";
    return 2;
  }
  try {
    return run(argc, argv);
  } catch (const Ort::Exception& e) {
    std::cerr << "onnxruntime: " << e.what() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
  }
  return 1;
}
