from onnxcam.cli import main

main(prog_name="onnxcam")
