// explain: run a model written by `onnxcam export` with the ONNX Runtime C++ API and save its heatmaps.
//
//   onnxcam export model.onnx -o model.cam.onnx --method gradcam
//   explain model.cam.onnx cat.png dog.jpg --out heat          (built with OpenCV)
//   explain model.cam.onnx --tensor x.f32 2,3,224,224 --out heat
//
// One Run call gives the model's own outputs, the heatmap `onnxcam/map` [N, H, W] in [0, 1] and the
// class each map explains `onnxcam/target` [N]. Images are preprocessed as onnxcam does (straight
// resize to the input size, the preset the model's metadata names); a raw tensor is fed as it is.
// Outputs: PREFIX.f32 (every map, raw float32 [N, H, W], for exact comparison) and, per image,
// PREFIX.I.png (the JET heatmap blended over the image; with OpenCV) or PREFIX.I.pgm (the map in gray).
#include <onnxruntime_cxx_api.h>

#ifdef EXPLAIN_WITH_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/core/utils/logger.hpp>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

const char* const kClassInput = "onnxcam/class";
const char* const kMapOutput = "onnxcam/map";
const char* const kTargetOutput = "onnxcam/target";

const char* const kUsage =
    "usage: explain [--class K] [--out PREFIX] MODEL IMAGE...             (built with OpenCV)\n"
    "       explain [--class K] [--out PREFIX] MODEL --tensor FILE.f32 N,C,H,W\n"
    "  MODEL    a model written by `onnxcam export` (.onnx, or .ort from --format ort)\n"
    "  IMAGE    image files, one batch; preprocessed as the model's metadata says\n"
    "  --tensor the model's input tensor as raw little-endian float32, with its shape\n"
    "  --class  the class to explain in every image (default: each image's top-1)\n"
    "  --out    output prefix (default: heatmap): PREFIX.f32 holds every map as float32 [N, H, W];\n"
    "           PREFIX.I.png is image I's overlay (OpenCV), PREFIX.I.pgm its map in gray (no OpenCV)\n";

// Wrong command line: exit status 2 with the usage text. Every other failure: a std::exception, status 1.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::string model;
  std::vector<std::string> images;
  std::string tensor;                // raw float32 file, or empty
  std::vector<int64_t> tensor_shape;
  int64_t target = -1;               // -1: each image's top-1
  std::string out = "heatmap";
};

// A preprocessed batch in the model's input layout.
struct Batch {
  std::vector<float> data;
  std::vector<int64_t> shape;
#ifdef EXPLAIN_WITH_OPENCV
  std::vector<cv::Mat> images;  // the BGR pictures, for the overlays (empty for a raw tensor)
#endif
};

// What the model's metadata says: onnxcam export records its names as JSON under "onnxcam.export",
// and onnxcam's preprocessing preset under "onnxcam.preprocess".
struct ExportInfo {
  std::string image_input;
  std::string layout;      // "NCHW" or "NHWC"
  std::string logits;
  std::string preprocess;  // empty when the model names none
};

int64_t parse_int(const std::string& text, const char* what) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) throw UsageError(std::string("bad ") + what + " '" + text + "'");
  return value;
}

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> dims;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    dims.push_back(parse_int(item, "dimension"));
    if (dims.back() <= 0) throw UsageError("bad dimension '" + item + "' in shape " + text);
  }
  if (dims.empty()) throw UsageError("empty shape");
  return dims;
}

Args parse_args(int argc, char** argv) {
  Args args;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](int count) {
      if (i + count >= argc) throw UsageError(arg + " needs " + (count == 1 ? "a value" : "two values"));
      return std::string(argv[++i]);
    };
    if (arg == "--class") {
      args.target = parse_int(value(1), "class");
    } else if (arg == "--out") {
      args.out = value(1);
    } else if (arg == "--tensor") {
      args.tensor = value(2);
      args.tensor_shape = parse_shape(argv[++i]);
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw UsageError("unknown option " + arg);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.empty()) throw UsageError("no MODEL");
  args.model = positional[0];
  args.images.assign(positional.begin() + 1, positional.end());
  if (args.tensor.empty() == args.images.empty())
    throw UsageError("give either images or --tensor FILE.f32 SHAPE");
#ifndef EXPLAIN_WITH_OPENCV
  if (!args.images.empty())
    throw UsageError("this build has no OpenCV to read images: pass --tensor (or rebuild with OpenCV)");
#endif
  if (args.target < -1) throw UsageError("bad class " + std::to_string(args.target) + ": -1 (top-1) or a class index");
  return args;
}

// The string value of "key" in the flat JSON object of "onnxcam.export" (names such as "image_input");
// "" when absent. Not a general JSON parser: enough for the names onnxcam writes.
std::string json_string(const std::string& json, const std::string& key) {
  size_t at = json.find("\"" + key + "\"");
  if (at == std::string::npos) return "";
  at = json.find_first_not_of(" \t\n", at + key.size() + 2);
  if (at == std::string::npos || json[at] != ':') return "";
  at = json.find_first_not_of(" \t\n", at + 1);
  if (at == std::string::npos || json[at] != '"') return "";
  std::string value;
  for (++at; at < json.size() && json[at] != '"'; ++at) {
    if (json[at] == '\\' && at + 1 < json.size()) ++at;  // \" and \\ (other escapes do not occur in names)
    value += json[at];
  }
  return value;
}

std::string metadata_value(Ort::ModelMetadata& metadata, const char* key, Ort::AllocatorWithDefaultOptions& allocator) {
  const Ort::AllocatedStringPtr value = metadata.LookupCustomMetadataMapAllocated(key, allocator);
  return value ? value.get() : "";
}

ExportInfo read_export_info(Ort::Session& session, const std::string& model) {
  Ort::AllocatorWithDefaultOptions allocator;
  Ort::ModelMetadata metadata = session.GetModelMetadata();
  const std::string meta = metadata_value(metadata, "onnxcam.export", allocator);
  if (meta.empty()) throw std::runtime_error(model + " is not an onnxcam export (no onnxcam.export metadata)");
  ExportInfo info{json_string(meta, "image_input"), json_string(meta, "layout"), json_string(meta, "logits"),
                  metadata_value(metadata, "onnxcam.preprocess", allocator)};
  bool found = false;
  for (size_t i = 0; i < session.GetInputCount(); ++i)
    found = found || session.GetInputNameAllocated(i, allocator).get() == info.image_input;
  if (!found) throw std::runtime_error(model + " has no input '" + info.image_input + "' (its onnxcam.export metadata names it)");
  return info;
}

// The declared shape of the image input (-1 for a dynamic dimension).
std::vector<int64_t> input_shape(Ort::Session& session, const std::string& name) {
  Ort::AllocatorWithDefaultOptions allocator;
  for (size_t i = 0; i < session.GetInputCount(); ++i)
    if (session.GetInputNameAllocated(i, allocator).get() == name)
      return session.GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetShape();
  return {};
}

// The number of classes: the scores output's last dimension, -1 where it is dynamic.
int64_t class_count(Ort::Session& session, const std::string& logits) {
  Ort::AllocatorWithDefaultOptions allocator;
  for (size_t i = 0; i < session.GetOutputCount(); ++i) {
    if (session.GetOutputNameAllocated(i, allocator).get() != logits) continue;
    const auto dims = session.GetOutputTypeInfo(i).GetTensorTypeAndShapeInfo().GetShape();
    if (!dims.empty()) return dims.back();
  }
  return -1;
}

std::string shape_text(const std::vector<int64_t>& dims) {
  std::string text;
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? "," : "") + (dims[i] < 0 ? std::string("?") : std::to_string(dims[i]));
  return text;
}

Batch read_tensor(const std::string& path, const std::vector<int64_t>& shape, const std::vector<int64_t>& declared) {
  bool fits = shape.size() == declared.size();
  for (size_t i = 0; fits && i < shape.size(); ++i) fits = declared[i] < 0 || declared[i] == shape[i];
  if (!fits) throw std::runtime_error("shape " + shape_text(shape) + " does not fit the model's input " + shape_text(declared));
  Batch batch;
  batch.shape = shape;
  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(d);
  batch.data.resize(count);
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot read " + path);
  if (!file.read(reinterpret_cast<char*>(batch.data.data()), static_cast<std::streamsize>(count * sizeof(float))) ||
      file.peek() != std::ifstream::traits_type::eof())
    throw std::runtime_error(path + " does not hold exactly " + std::to_string(count) + " float32 values (shape " + shape_text(shape) + ")");
  return batch;
}

#ifdef EXPLAIN_WITH_OPENCV
// Normalization on 0..255 pixel values, as onnxcam/preprocess.py's PRESETS: (x - mean) / std.
struct Preset {
  float mean[3];
  float std[3];
  bool bgr;
};

const std::map<std::string, Preset>& presets() {
  static const std::map<std::string, Preset> table = {
      {"imagenet", {{123.675f, 116.28f, 103.53f}, {58.395f, 57.12f, 57.375f}, false}},
      {"inception", {{127.5f, 127.5f, 127.5f}, {127.5f, 127.5f, 127.5f}, false}},
      {"lite", {{127.0f, 127.0f, 127.0f}, {128.0f, 128.0f, 128.0f}, false}},
      {"caffe", {{103.939f, 116.779f, 123.68f}, {1.0f, 1.0f, 1.0f}, true}},
      {"unit", {{0.0f, 0.0f, 0.0f}, {255.0f, 255.0f, 255.0f}, false}},
      {"raw", {{0.0f, 0.0f, 0.0f}, {1.0f, 1.0f, 1.0f}, false}},
  };
  return table;
}

// Images as onnxcam/preprocess.py's to_tensor makes them: resized straight to the input size (INTER_AREA
// when shrinking either side, else INTER_LINEAR), (x - mean) / std on 0..255, in the model's layout.
// cv::imread applies EXIF orientation and makes gray, palette and 16-bit images 8-bit BGR like onnxcam;
// unlike onnxcam it drops an alpha channel instead of compositing it over white.
Batch read_images(const std::vector<std::string>& paths, const ExportInfo& info, const std::vector<int64_t>& declared) {
  if (declared.size() != 4) throw std::runtime_error("the image input is not 4-D (" + shape_text(declared) + "): pass --tensor");
  const bool nhwc = info.layout == "NHWC";
  const int64_t c = declared[nhwc ? 3 : 1], h = declared[nhwc ? 1 : 2], w = declared[nhwc ? 2 : 3];
  if (h <= 0 || w <= 0) throw std::runtime_error("the model's input size is dynamic (" + shape_text(declared) + "): pass --tensor");
  if (c != 3 && c != 1) throw std::runtime_error("the image input has " + std::to_string(c) + " channels; images give 3 (or 1): pass --tensor");
  std::string name = info.preprocess;
  if (name.empty()) {
    name = "imagenet";
    std::cerr << "note: the model names no preprocessing (onnxcam.preprocess); assuming imagenet\n";
  }
  const auto preset = presets().find(name);
  if (preset == presets().end()) throw std::runtime_error("unknown preprocessing preset '" + name + "' in the model's metadata");
  const Preset& p = preset->second;
  cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_ERROR);  // a missing file: our message, not its warning

  Batch batch;
  const int64_t n = static_cast<int64_t>(paths.size());
  batch.shape = nhwc ? std::vector<int64_t>{n, h, w, c} : std::vector<int64_t>{n, c, h, w};
  batch.data.resize(static_cast<size_t>(n * c * h * w));
  const size_t plane = static_cast<size_t>(h * w);
  for (size_t i = 0; i < paths.size(); ++i) {
    cv::Mat bgr = cv::imread(paths[i], cv::IMREAD_COLOR);
    if (bgr.empty()) throw std::runtime_error("cannot read image " + paths[i] + " (missing, or not an image OpenCV decodes)");
    const bool shrink = bgr.rows > h || bgr.cols > w;
    cv::Mat resized, pixels;
    cv::resize(bgr, resized, cv::Size(static_cast<int>(w), static_cast<int>(h)), 0, 0, shrink ? cv::INTER_AREA : cv::INTER_LINEAR);
    resized.convertTo(pixels, CV_32FC3);
    float* dest = batch.data.data() + i * static_cast<size_t>(c) * plane;
    for (int y = 0; y < pixels.rows; ++y) {
      const cv::Vec3f* row = pixels.ptr<cv::Vec3f>(y);
      for (int x = 0; x < pixels.cols; ++x) {
        const size_t at = static_cast<size_t>(y) * static_cast<size_t>(w) + static_cast<size_t>(x);
        const cv::Vec3f& px = row[x];  // B, G, R
        if (c == 1) {  // gray: the mean of the channels, normalized by the means of mean and std
          const float v = (px[0] + px[1] + px[2]) / 3.0f;
          dest[at] = (v - (p.mean[0] + p.mean[1] + p.mean[2]) / 3.0f) / ((p.std[0] + p.std[1] + p.std[2]) / 3.0f);
          continue;
        }
        for (size_t k = 0; k < 3; ++k) {  // k: the model's channel, R G B (or B G R for a BGR preset)
          const float v = p.bgr ? px[static_cast<int>(k)] : px[static_cast<int>(2 - k)];
          dest[nhwc ? at * 3 + k : k * plane + at] = (v - p.mean[k]) / p.std[k];
        }
      }
    }
    batch.images.push_back(bgr);
  }
  return batch;
}
#endif

// Write the whole file or nothing: a temporary file beside it, renamed into place.
void write_file(const std::string& path, const char* data, size_t size) {
  const std::string staging = path + ".part";
  {
    std::ofstream out(staging, std::ios::binary | std::ios::trunc);
    if (!out.write(data, static_cast<std::streamsize>(size)) || !out.flush()) {
      out.close();
      std::remove(staging.c_str());
      throw std::runtime_error("cannot write " + path);
    }
  }
  if (std::rename(staging.c_str(), path.c_str()) != 0) {
    std::remove(staging.c_str());
    throw std::runtime_error("cannot write " + path);
  }
}

// Image i's picture: with OpenCV, the JET-coloured map blended 50/50 over the image at the image's own
// size (onnxcam/render.py's overlay), or the coloured map alone for a raw tensor; without, a gray PGM.
std::string write_picture(const std::string& prefix, size_t i, const float* heat, int h, int w, const Batch& batch) {
#ifdef EXPLAIN_WITH_OPENCV
  const std::string path = prefix + "." + std::to_string(i) + ".png";
  cv::Mat map(h, w, CV_32F, const_cast<float*>(heat)), gray, colored, picture;
  cv::Mat image = batch.images.empty() ? cv::Mat() : batch.images[i];
  if (!image.empty() && image.size() != map.size()) cv::resize(map, map, image.size());
  gray.create(map.size(), CV_8U);
  for (int y = 0; y < map.rows; ++y)  // uint8(clip(map, 0, 1) * 255), truncated as NumPy does
    for (int x = 0; x < map.cols; ++x)
      gray.at<uint8_t>(y, x) = static_cast<uint8_t>(std::min(std::max(map.at<float>(y, x), 0.0f), 1.0f) * 255.0f);
  cv::applyColorMap(gray, colored, cv::COLORMAP_JET);
  if (image.empty()) picture = colored;
  else cv::addWeighted(colored, 0.5, image, 0.5, 0.0, picture);
  std::vector<unsigned char> png;
  if (!cv::imencode(".png", picture, png)) throw std::runtime_error("cannot encode " + path);
  write_file(path, reinterpret_cast<const char*>(png.data()), png.size());
#else
  (void)batch;
  const std::string path = prefix + "." + std::to_string(i) + ".pgm";
  std::string pgm = "P5\n" + std::to_string(w) + " " + std::to_string(h) + "\n255\n";
  for (int64_t k = 0; k < static_cast<int64_t>(h) * w; ++k) {
    const float v = std::min(std::max(heat[k], 0.0f), 1.0f);
    pgm += static_cast<char>(static_cast<uint8_t>(v * 255.0f + 0.5f));
  }
  write_file(path, pgm.data(), pgm.size());
#endif
  return path;
}

int run(const Args& args) {
  Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "explain");
  Ort::SessionOptions options;
  options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  Ort::Session session(env, args.model.c_str(), options);  // ORTCHAR_T is char on Linux and macOS; .ort by suffix
  const ExportInfo info = read_export_info(session, args.model);
  const std::vector<int64_t> declared = input_shape(session, info.image_input);

#ifdef EXPLAIN_WITH_OPENCV
  Batch batch = args.images.empty() ? read_tensor(args.tensor, args.tensor_shape, declared)
                                    : read_images(args.images, info, declared);
#else
  Batch batch = read_tensor(args.tensor, args.tensor_shape, declared);
#endif
  // The graph does not check the class: an out-of-range one would give an all-zero map.
  const int64_t classes = class_count(session, info.logits);
  if (classes > 0 && args.target >= classes)
    throw std::runtime_error("class " + std::to_string(args.target) + " is out of range: -1 (top-1) or 0.." + std::to_string(classes - 1));

  auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<Ort::Value> inputs;
  inputs.push_back(Ort::Value::CreateTensor<float>(memory, batch.data.data(), batch.data.size(), batch.shape.data(), batch.shape.size()));
  // "onnxcam/class" is always fed, so both kinds of export work: `--class-input optional` (an overridable
  // initializer defaulting to -1) and `--class-input required` (a plain input).
  std::vector<int64_t> targets_in(static_cast<size_t>(batch.shape[0]), args.target);
  const int64_t class_shape[1] = {batch.shape[0]};
  inputs.push_back(Ort::Value::CreateTensor<int64_t>(memory, targets_in.data(), targets_in.size(), class_shape, 1));
  const char* input_names[] = {info.image_input.c_str(), kClassInput};
  const char* output_names[] = {kMapOutput, kTargetOutput};
  auto outputs = session.Run(Ort::RunOptions{nullptr}, input_names, inputs.data(), inputs.size(), output_names, 2);

  const auto map_shape = outputs[0].GetTensorTypeAndShapeInfo().GetShape();
  if (map_shape.size() != 3 || map_shape[0] != batch.shape[0])
    throw std::runtime_error("onnxcam/map has shape " + shape_text(map_shape) + ", not [N, H, W]");
  const int h = static_cast<int>(map_shape[1]), w = static_cast<int>(map_shape[2]);
  const float* heat = outputs[0].GetTensorData<float>();
  const int64_t* targets = outputs[1].GetTensorData<int64_t>();
  const size_t n = static_cast<size_t>(map_shape[0]), plane = static_cast<size_t>(h) * static_cast<size_t>(w);

  const std::string raw = args.out + ".f32";
  write_file(raw, reinterpret_cast<const char*>(heat), n * plane * sizeof(float));
  std::cout << "maps      " << raw << "  float32 [" << n << ", " << h << ", " << w << "]\n";
  for (size_t i = 0; i < n; ++i) {
    const std::string picture = write_picture(args.out, i, heat + i * plane, h, w, batch);
    std::cout << "image " << i << "   class " << targets[i] << "  " << picture << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // The headers' API version must be one this library serves: an older library returns no API table.
  if (OrtGetApiBase()->GetApi(ORT_API_VERSION) == nullptr) {
    std::cerr << "error: ONNX Runtime " << OrtGetApiBase()->GetVersionString() << " is older than the headers this "
              << "program was built with (API version " << ORT_API_VERSION << ")\n";
    return 1;
  }
  if (argc == 2 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help")) {
    std::cout << kUsage;
    return 0;
  }
  try {
    return run(parse_args(argc, argv));
  } catch (const UsageError& e) {
    std::cerr << "error: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const Ort::Exception& e) {
    std::cerr << "error: onnxruntime: " << e.what() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
  }
  return 1;
}
