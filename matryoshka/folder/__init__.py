"""What an export folder holds beyond its level graphs, with no torch: the `cascade.onnx`
builder (`cascade`), the folder's cascade files, their bit-for-bit check and the mobile format
(`cascades`), and the shared INT8 levels (`shared_int8`). Every writer (mexport, calibrate,
tune, bundle) installs its files and commits its manifest through here. docs/design.md, "The
export folder" and "The cascade as one graph"."""
