"""Export benchmarks: memory and speed of an exported model in fp32, bf16 and weight-only int8."""
