# ctest deploy_install_runtime_tree: runs scripts/install_runtime_tree (what the Dockerfile's
# stages run after scripts/test) into PREFIX and checks the tree it leaves.
cmake_minimum_required(VERSION 3.25)
file(REMOVE_RECURSE "${PREFIX}")
execute_process(COMMAND "${SOURCE_DIR}/scripts/install_runtime_tree" "${BUILD_DIR}" "${PREFIX}"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "install_runtime_tree failed (${rc})")
endif()
foreach(f bin/spanserve-server bin/spanserve-client models/spanserve-span-12l/config.json
        models/spanserve-span-12l/model.safetensors models/spanserve-span-moe-12l/config.json)
  if(NOT EXISTS "${PREFIX}/${f}")
    message(FATAL_ERROR "install_runtime_tree left no ${f}")
  endif()
endforeach()
# The CUDA plugin travels with the server where the build made it.
if(EXISTS "${BUILD_DIR}/lib/libspanserve_cuda.so" AND NOT EXISTS "${PREFIX}/lib/libspanserve_cuda.so")
  message(FATAL_ERROR "install_runtime_tree left out the CUDA plugin lib/libspanserve_cuda.so")
endif()
file(STRINGS "${PREFIX}/runtime-packages" packages)
foreach(p libc6 libstdc++6)
  if(NOT p IN_LIST packages)
    message(FATAL_ERROR "runtime-packages lacks ${p}: ${packages}")
  endif()
endforeach()
if(NOT packages MATCHES "libgrpc\\+\\+1")
  message(FATAL_ERROR "runtime-packages names no libgrpc++ package: ${packages}")
endif()
# The installed server runs from the tree and serves the bundled model (CMD of the image).
execute_process(COMMAND "${PREFIX}/bin/spanserve-server" --helpfull
  RESULT_VARIABLE rc OUTPUT_VARIABLE help ERROR_VARIABLE help)
if(NOT help MATCHES "--metrics_address")
  message(FATAL_ERROR "the installed spanserve-server does not run: ${help}")
endif()
message(STATUS "runtime tree: ${PREFIX}; packages: ${packages}")
