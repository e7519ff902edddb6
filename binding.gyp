# The NFQUEUE addon (native/). Built by `npm install` through node-gyp with the local Node
# headers (npm's nodedir=/usr on our machines; elsewhere set npm_config_nodedir=/usr).
{
  "targets": [
    {
      "target_name": "psd_nfqueue",
      "sources": ["native/addon.cc", "native/nfq_queue.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS", "_GNU_SOURCE"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags": ["-Wall", "-Wextra", "-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-fno-exceptions", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
      "conditions": [
        ["OS!='linux'", { "type": "none" }]
      ]
    }
  ]
}
